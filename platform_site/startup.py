"""Work a web process does once when it starts, so its first request is not its slowest.

Without this the first request imports the URL configuration (and through it pandas and
scikit-learn) and the first model load imports the estimator's module: ~0.75 s measured by
bench/memory_bench.py. Imported here, before the worker takes traffic.
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger(__name__)

# The estimator families most uploads use; any other module is imported on first use.
COMMON_SKLEARN_MODULES = (
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.tree",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "sklearn.compose",
    "sklearn.impute",
    "sklearn.naive_bayes",
    "sklearn.neighbors",
    "sklearn.svm",
)


def warm_up() -> None:
    from django.db import connection
    from django.urls import get_resolver

    from platform_site.metrics import forget_dead_processes

    forget_dead_processes()  # a worker started in place of one that died

    _ = get_resolver().url_patterns  # reading it imports every app's views
    for name in COMMON_SKLEARN_MODULES:
        importlib.import_module(name)
    import registry.loaders.allowlist  # noqa: F401  (the safe loader's checks)
    import registry.loaders.formats  # noqa: F401

    try:
        connection.ensure_connection()
    except Exception:  # the database may be down at start; /readyz says so, requests answer 503
        logger.warning("database not reachable at start", exc_info=True)
