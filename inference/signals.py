"""React to the registry: a promotion makes every process re-resolve routes and warms here."""

from __future__ import annotations

import logging

from django.dispatch import receiver

from inference import routing
from inference.limits import ROUTE_GENERATION_KEY
from platform_site.redis_client import REDIS_ERRORS, get_redis, report_failure
from registry.models import RegisteredModel
from registry.services import production_changed, serving_changed

logger = logging.getLogger(__name__)


@receiver(production_changed)
def on_production_changed(sender, *, model_id: int, version_id: int | None, **kwargs) -> None:
    if sender is RegisteredModel:  # production itself changed (not an experiment's or a mirror's route)
        from inference.mirrors.services import stop_mirrors_off_production

        try:
            stop_mirrors_off_production(model_id=model_id, production_id=version_id)
        except Exception:  # the mirror worker skips records off its baseline anyway; the stop is tidiness
            logger.exception("could not stop the mirrors of model %s", model_id)
    routing.clear_routes()
    client = get_redis()
    if client is not None:
        try:
            client.incr(ROUTE_GENERATION_KEY)
        except REDIS_ERRORS as exc:
            report_failure(exc)
    if version_id is not None:
        warm_version(version_id)


@receiver(serving_changed)
def on_serving_changed(sender, *, model_id: int, version_id: int, warm: bool = False, **kwargs) -> None:
    """A version's runtime changed: every process re-resolves its routes (and so its target).

    A route names the compiled form's sha256, and a runner holding the version without it (or
    with another) answers "need artifact" and is sent both again: the runners switch on their
    next request for it, with no restart. With `warm` (a compile just stored a verified form), a
    production version is loaded into its organization's runners at once."""
    on_production_changed(sender, model_id=model_id, version_id=None)
    if warm:
        from registry.models import RegisteredModel

        if RegisteredModel.objects.filter(id=model_id, production_version_id=version_id).exists():
            warm_version(version_id)


def warm_version(version_id: int) -> None:
    """Have the organization's runner load a newly promoted version before traffic arrives."""
    from inference import predictors
    from registry.models import ModelVersion

    try:
        version = ModelVersion.objects.select_related("registered_model").get(id=version_id)
        predictors.warm(target=routing.target_for(version))
    except Exception:  # warming is an optimisation; the first request loads it otherwise
        logger.exception("could not warm version %s", version_id)
