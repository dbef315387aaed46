"""Writes for live mirrors: start one (validated), stop one.

A mirror is a routing setting, like an experiment: starting or stopping one drops the routes
here and bumps the Redis generation counter (inference.signals), so every web process reads the
new fraction on its next request. The comparison itself is the analytics worker's
(analytics.services.mirrors).
"""

from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.principals import Caller
from accounts.services import record_audit_event
from inference.mirrors import selectors
from inference.models import Mirror
from platform_site.errors import Conflict, InvalidInput
from registry import selectors as registry_selectors
from registry.models import RegisteredModel

# A mirror doubles the runner work of the requests it samples: at most half of production's.
MAX_FRACTION = 0.5


def _reroute(model_id: int) -> None:
    from inference.signals import on_production_changed

    transaction.on_commit(lambda: on_production_changed(sender=Mirror, model_id=model_id, version_id=None))


def _check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= MAX_FRACTION:
        raise InvalidInput(
            f"fraction={fraction!r}: mirror more than none and at most {MAX_FRACTION:g} of production's requests.",
            errors=[{"field": "fraction", "message": f"expected a number above 0 and at most {MAX_FRACTION:g}"}],
        )
    return float(fraction)


def _check_rows_per_hour(max_rows_per_hour: int | None) -> int:
    ceiling = settings.MIRROR_MAX_ROWS_PER_HOUR
    if max_rows_per_hour is None:
        return settings.MIRROR_DEFAULT_ROWS_PER_HOUR
    if isinstance(max_rows_per_hour, bool) or not isinstance(max_rows_per_hour, int) or not 1 <= max_rows_per_hour <= ceiling:
        raise InvalidInput(
            f"max_rows_per_hour={max_rows_per_hour!r}: a mirror predicts 1 to {ceiling} rows an hour.",
            errors=[{"field": "max_rows_per_hour", "message": f"expected a whole number from 1 to {ceiling}"}],
        )
    return max_rows_per_hour


@transaction.atomic
def start_mirror(
    *, caller: Caller, model: RegisteredModel, version_number: int, fraction: float, max_rows_per_hour: int | None = None
) -> Mirror:
    """Mirror `fraction` of production's requests to version `version_number`; one mirror per model (409 otherwise)."""
    fraction = _check_fraction(fraction)
    max_rows_per_hour = _check_rows_per_hour(max_rows_per_hour)
    model = (
        RegisteredModel.objects.select_for_update(of=("self",))
        .select_related("organization", "production_version")
        .get(pk=model.pk)
    )
    version = registry_selectors.version_of(model=model, number=version_number)
    production = model.production_version
    if production is None:
        raise InvalidInput(
            f"{model.full_name} has no production version: a mirror copies production's requests to another version.",
            errors=[{"field": "version", "message": "no production version"}],
        )
    if production.pk == version.pk:
        raise InvalidInput(
            f"Version {version.number} is the production version; mirror another version.",
            errors=[{"field": "version", "message": "is in production"}],
        )
    if production.task != version.task:
        raise InvalidInput(
            f"Version {version.number} is a {version.task} model and production (version {production.number}) "
            f"a {production.task} one; their answers cannot be compared.",
            errors=[{"field": "version", "message": "task differs from production's"}],
        )
    running = selectors.running_mirror(model=model)
    if running is not None:
        raise Conflict(
            f"{model.full_name} already mirrors {running.fraction:.0%} of production to version {running.version.number} "
            f"(mirror {running.id}); stop it first.",
            mirror_id=running.id,
        )
    try:
        with transaction.atomic():
            mirror = Mirror.objects.create(
                registered_model=model,
                version=version,
                baseline_version=production,
                fraction=fraction,
                max_rows_per_hour=max_rows_per_hour,
                created_by=caller.person,
            )
    except IntegrityError:  # a concurrent start won the partial unique constraint
        raise Conflict(f"{model.full_name} already runs a mirror; stop it first.") from None
    record_audit_event(
        organization=model.organization,
        caller=caller,
        action="mirror.started",
        target=mirror,
        data={
            "model": model.name,
            "version": version.number,
            "production": production.number,
            "fraction": fraction,
            "max_rows_per_hour": max_rows_per_hour,
        },
    )
    _reroute(model.pk)
    return mirror


@transaction.atomic
def stop_mirror(*, caller: Caller | None, model: RegisteredModel, reason: str = "stopped by its owner") -> Mirror:
    """Stop the model's running mirror (409 when none runs); its report stays."""
    model = RegisteredModel.objects.select_for_update(of=("self",)).select_related("organization").get(pk=model.pk)
    mirror = selectors.running_mirror(model=model)
    if mirror is None:
        raise Conflict(f"{model.full_name} runs no mirror.")
    _stop(mirror, reason=reason)
    record_audit_event(
        organization=model.organization,
        caller=caller,
        action="mirror.stopped",
        target=mirror,
        data={"model": model.name, "version": mirror.version.number, "reason": reason},
    )
    return mirror


def _stop(mirror: Mirror, *, reason: str) -> None:
    mirror.status = Mirror.Status.STOPPED
    mirror.stopped_at = timezone.now()
    mirror.stop_reason = reason[:200]
    mirror.save(update_fields=["status", "stopped_at", "stop_reason"])
    _reroute(mirror.registered_model_id)


def stop_mirrors_off_production(*, model_id: int, production_id: int | None) -> int:
    """A promotion, rollback or retirement ends a mirror whose baseline is no longer production."""
    stopped = 0
    for mirror in Mirror.objects.filter(registered_model_id=model_id, status=Mirror.Status.RUNNING).exclude(
        baseline_version_id=production_id
    ):
        _stop(mirror, reason="production changed")
        stopped += 1
    return stopped
