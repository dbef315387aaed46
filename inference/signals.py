"""React to the registry: a promotion makes every process re-resolve routes and warms here."""
from __future__ import annotations

import logging

from django.dispatch import receiver

from inference import routing
from inference.limits import ROUTE_GENERATION_KEY
from platform_site.redis_client import REDIS_ERRORS, get_redis, report_failure
from registry.services import production_changed

logger = logging.getLogger(__name__)


@receiver(production_changed)
def on_production_changed(sender, *, model_id: int, version_id: int | None, **kwargs) -> None:
    routing.clear_routes()
    client = get_redis()
    if client is not None:
        try:
            client.incr(ROUTE_GENERATION_KEY)
        except REDIS_ERRORS as exc:
            report_failure(exc)
    if version_id is not None:
        warm_version(version_id)


def warm_version(version_id: int) -> None:
    """Load a newly promoted version into this process's model cache before traffic arrives."""
    from inference.hotpath import _load_estimator
    from inference.model_cache import models
    from registry.models import ModelVersion

    try:
        size = ModelVersion.objects.values_list("size_bytes", flat=True).get(id=version_id)
        models.get(version_id, size_bytes=size, load=lambda: _load_estimator(version_id))
    except Exception:  # warming is an optimisation; the first request loads it otherwise
        logger.exception("could not warm version %s", version_id)
