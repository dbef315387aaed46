"""Reads for experiments; another organization's experiment is NotFound, like a missing one."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Role
from accounts.principals import Caller
from accounts.selectors import for_organization, organization_for_caller, organizations_for_caller
from inference.models import Experiment
from platform_site.errors import NotFound
from registry.models import RegisteredModel


def experiments_of(*, model: RegisteredModel) -> QuerySet:
    return (
        for_organization(Experiment.objects, model.organization)
        .filter(registered_model=model)
        .select_related("registered_model__organization", "created_by", "winner_version")
    )


def running_experiment(*, model: RegisteredModel) -> Experiment | None:
    return experiments_of(model=model).filter(status=Experiment.Status.RUNNING).first()


def experiment_of(*, model: RegisteredModel, experiment_id: int) -> Experiment:
    experiment = experiments_of(model=model).filter(id=experiment_id).first()
    if experiment is None:
        raise NotFound()
    return experiment


def experiment_for_caller(*, caller: Caller, experiment_id: int, min_role: str = Role.VIEWER) -> Experiment:
    """The experiment if it belongs to one of the caller's organizations (with `min_role` there)."""
    experiment = (
        Experiment.objects.select_related("registered_model__organization", "created_by", "winner_version")
        .filter(
            id=experiment_id,
            registered_model__organization__in=organizations_for_caller(caller=caller),
            registered_model__deleted_at__isnull=True,
        )
        .first()
    )
    if experiment is None:
        raise NotFound()
    organization_for_caller(caller=caller, slug=experiment.registered_model.organization.slug, min_role=min_role)
    return experiment
