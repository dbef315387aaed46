"""Replays: a model's or a version's list, and one replay of a model."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.selectors import for_organization
from analytics.models import Replay
from platform_site.errors import NotFound
from registry.models import ModelVersion, RegisteredModel


def replays_of(*, model: RegisteredModel, version: ModelVersion | None = None) -> QuerySet:
    replays = for_organization(Replay.objects, model.organization).filter(registered_model=model)
    if version is not None:
        replays = replays.filter(version=version)
    return replays.select_related("registered_model__organization", "version", "baseline_version", "created_by")


def replay_of(*, model: RegisteredModel, replay_id: int, version: ModelVersion | None = None) -> Replay:
    replay = replays_of(model=model, version=version).filter(id=replay_id).first()
    if replay is None:
        raise NotFound()
    return replay


def latest_replay_of(*, version: ModelVersion) -> Replay | None:
    """The version's newest replay against the current production version, finished or not."""
    model = version.registered_model
    return replays_of(model=model, version=version).filter(baseline_version_id=model.production_version_id).first()
