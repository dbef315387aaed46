"""Work a web process does once when it starts, so its first request is not its slowest.

Without this the first request imports the URL configuration (every app's views) and opens the
database connection. The web never imports scikit-learn: tenants' estimators are loaded and
predicted in runners (inference/runners), and what the web computes itself (linear models'
verified coefficients, validation, statistics) needs numpy, pandas and scipy only.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def warm_up() -> None:
    from django.db import connection
    from django.urls import get_resolver

    from platform_site.metrics import forget_dead_processes

    forget_dead_processes()  # a worker started in place of one that died

    _ = get_resolver().url_patterns  # reading it imports every app's views
    import registry.loaders.allowlist  # noqa: F401  (the safe loader's checks)
    import registry.loaders.formats  # noqa: F401

    try:
        connection.ensure_connection()
    except Exception:  # the database may be down at start; /readyz says so, requests answer 503
        logger.warning("database not reachable at start", exc_info=True)
