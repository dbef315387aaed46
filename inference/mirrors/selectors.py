"""Reads for live mirrors; another organization's mirror is never returned."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.selectors import for_organization
from inference.models import Mirror
from registry.models import RegisteredModel


def mirrors_of(*, model: RegisteredModel) -> QuerySet:
    return (
        for_organization(Mirror.objects, model.organization)
        .filter(registered_model=model)
        .select_related("registered_model__organization", "version", "baseline_version", "created_by")
    )


def running_mirror(*, model: RegisteredModel) -> Mirror | None:
    return mirrors_of(model=model).filter(status=Mirror.Status.RUNNING).first()


def current_mirror(*, model: RegisteredModel) -> Mirror | None:
    """The running mirror, else the newest stopped one (its report stays readable), else None."""
    return running_mirror(model=model) or mirrors_of(model=model).first()
