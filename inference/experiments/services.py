"""Writes for experiments: start one (validated), stop it, promote its winner as a release.

Routes are cached in every web process; after a change, the routes here are dropped and
the Redis generation counter is bumped exactly as a promotion does (inference.signals), so
other processes re-resolve on their next request.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.principals import Caller
from accounts.services import record_audit_event
from inference.experiments import selectors
from inference.models import Experiment
from inference.signals import on_production_changed
from platform_site.errors import Conflict, InvalidInput
from registry import selectors as registry_selectors
from registry import services as registry_services
from registry.models import ModelVersion, RegisteredModel, Release, Stage

MAX_VARIANTS = 10
# Feedback can carry a label (classifiers, outlier detectors: -1/1) or a value (regressors), never
# both kinds for one model; clusterers take no feedback, so no metric compares them.
METRIC_TASKS = {
    Experiment.Metric.ACCURACY: ("classification", "outlier_detection"),
    Experiment.Metric.MAE: ("regression",),
    Experiment.Metric.RMSE: ("regression",),
}


def _reroute(model_id: int) -> None:
    transaction.on_commit(lambda: on_production_changed(sender=Experiment, model_id=model_id, version_id=None))


def _check_variants(*, model: RegisteredModel, variants: list[dict]) -> list[dict]:
    """Each variant names an existing version of the model once; weights are whole percents summing to 100."""
    if not isinstance(variants, list) or not 2 <= len(variants) <= MAX_VARIANTS:
        raise InvalidInput(
            f"An experiment needs 2 to {MAX_VARIANTS} variants; the first is the control.",
            errors=[{"field": "variants", "message": f"expected 2 to {MAX_VARIANTS} variants"}],
        )
    versions = {
        v.number: v for v in ModelVersion.objects.filter(registered_model=model, number__in=[v.get("version") for v in variants])
    }
    errors, seen, stored = [], set(), []
    for index, variant in enumerate(variants):
        number, weight = variant.get("version"), variant.get("weight")
        if number not in versions:
            errors.append({"field": f"variants[{index}].version", "message": f"{model.full_name} has no version {number}"})
        elif number in seen:
            errors.append({"field": f"variants[{index}].version", "message": f"version {number} appears twice"})
        seen.add(number)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 99:
            errors.append({"field": f"variants[{index}].weight", "message": "expected a whole percent from 1 to 99"})
        if number in versions:
            stored.append(
                {
                    "version": number,
                    "version_id": versions[number].id,
                    "weight": weight,
                    "name": f"v{number}",
                    "task": versions[number].task,
                }
            )
    if errors:
        raise InvalidInput("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
    total = sum(v["weight"] for v in stored)
    if total != 100:
        raise InvalidInput(
            f"The variants' weights sum to {total}; they must sum to 100.",
            errors=[{"field": "variants", "message": f"weights sum to {total}, not 100"}],
        )
    return stored


def _check_metric(*, metric: str, variants: list[dict]) -> None:
    if metric not in Experiment.Metric.values:
        raise InvalidInput(
            f"'{metric}' is not a metric; choose accuracy, mae or rmse.",
            errors=[{"field": "metric", "message": "choose accuracy, mae or rmse"}],
        )
    tasks = METRIC_TASKS[Experiment.Metric(metric)]
    needed = " or ".join(tasks)
    for variant in variants:
        if variant["task"] not in tasks:
            raise InvalidInput(
                f"{metric} needs a {needed} model; version {variant['version']} is a {variant['task']} model.",
                errors=[{"field": "metric", "message": f"{metric} needs a {needed} model"}],
            )


@transaction.atomic
def create_experiment(
    *,
    caller: Caller,
    model: RegisteredModel,
    name: str,
    variants: list[dict],
    metric: str = Experiment.Metric.ACCURACY,
    min_samples: int | None = None,
) -> Experiment:
    """Start a traffic split; at most one runs per model (Conflict otherwise)."""
    model = RegisteredModel.objects.select_for_update(of=("self",)).select_related("organization").get(pk=model.pk)
    stored = _check_variants(model=model, variants=variants)
    _check_metric(metric=metric, variants=stored)
    stored = [{key: value for key, value in variant.items() if key != "task"} for variant in stored]
    running = selectors.running_experiment(model=model)
    if running is not None:
        raise Conflict(f"{model.full_name} already runs experiment '{running.name}' (id {running.id}); stop it first.")
    fields: dict[str, Any] = {
        "registered_model": model,
        "name": name,
        "metric": metric,
        "variants": stored,
        "created_by": caller.person,
    }
    if min_samples is not None:
        fields["min_samples"] = min_samples
    try:
        with transaction.atomic():
            experiment = Experiment.objects.create(**fields)
    except IntegrityError:  # a concurrent start won the partial unique constraint
        raise Conflict(f"{model.full_name} already runs an experiment; stop it first.") from None
    record_audit_event(
        organization=model.organization,
        caller=caller,
        action="experiment.started",
        target=experiment,
        data={
            "model": model.name,
            "name": name,
            "metric": metric,
            "variants": [{"version": v["version"], "weight": v["weight"]} for v in stored],
        },
    )
    _reroute(model.pk)
    return experiment


def _locked(experiment: Experiment) -> Experiment:
    return (
        Experiment.objects.select_for_update(of=("self",)).select_related("registered_model__organization").get(pk=experiment.pk)
    )


@transaction.atomic
def stop_experiment(*, caller: Caller, experiment: Experiment) -> Experiment:
    experiment = _locked(experiment)
    if experiment.status != Experiment.Status.RUNNING:
        raise Conflict(f"Experiment {experiment.id} is already stopped.")
    _stop(caller=caller, experiment=experiment)
    return experiment


def _stop(*, caller: Caller, experiment: Experiment) -> None:
    experiment.status = Experiment.Status.STOPPED
    experiment.stopped_at = timezone.now()
    experiment.save(update_fields=["status", "stopped_at"])
    model = experiment.registered_model
    record_audit_event(
        organization=model.organization,
        caller=caller,
        action="experiment.stopped",
        target=experiment,
        data={"model": model.name, "name": experiment.name},
    )
    _reroute(model.pk)


@transaction.atomic
def promote_winner(
    *, caller: Caller, experiment: Experiment, version_number: int, reason: str = "", require_replay: dict | None = None
) -> tuple[Experiment, Release | None]:
    """Stop the experiment (if running) and make the chosen variant production, as a release.

    Returns the release, or None when that version already was production. The release is
    made by registry.services.set_stage (the one place production changes, where
    `require_replay` is checked) and marked as kind "experiment".
    """
    experiment = _locked(experiment)
    if experiment.winner_version_id is not None:
        raise Conflict(f"Experiment {experiment.id} already promoted version {experiment.winner_version.number}.")
    variant = next((v for v in experiment.variants if v["version"] == version_number), None)
    if variant is None:
        numbers = ", ".join(str(v["version"]) for v in experiment.variants)
        raise InvalidInput(
            f"Version {version_number} is not a variant of this experiment (variants: {numbers}).",
            errors=[{"field": "version", "message": "not a variant of this experiment"}],
        )
    if experiment.status == Experiment.Status.RUNNING:
        _stop(caller=caller, experiment=experiment)
    model = experiment.registered_model
    winner = registry_selectors.version_of(model=model, number=version_number)
    release = None
    if model.production_version_id != winner.pk:
        registry_services.set_stage(
            caller=caller,
            version=winner,
            stage=Stage.PRODUCTION,
            reason=reason or f"winner of experiment '{experiment.name}'",
            require_replay=require_replay,
        )
        release = registry_selectors.releases_of(model=model).first()
        Release.objects.filter(pk=release.pk).update(kind=Release.Kind.EXPERIMENT)
        release.kind = Release.Kind.EXPERIMENT
    experiment.winner_version = winner
    experiment.save(update_fields=["winner_version"])
    record_audit_event(
        organization=model.organization,
        caller=caller,
        action="experiment.promoted",
        target=experiment,
        data={
            "model": model.name,
            "name": experiment.name,
            "version": version_number,
            "release": release.number if release else None,
        },
    )
    return experiment, release
