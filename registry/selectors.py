"""Reads for the registry; every tenant query goes through accounts' for_organization."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Organization, Role
from accounts.principals import Caller
from accounts.selectors import for_organization, organizations_for_caller
from platform_site.errors import NotFound
from registry.models import ModelVersion, RegisteredModel, Release


def live_models() -> QuerySet:
    return RegisteredModel.objects.filter(deleted_at__isnull=True).select_related("organization", "production_version")


def models_for_caller(*, caller: Caller) -> QuerySet:
    return live_models().filter(organization__in=organizations_for_caller(caller=caller, min_role=Role.VIEWER))


def model_in(*, organization: Organization, name: str) -> RegisteredModel:
    model = for_organization(live_models(), organization).filter(name=name).first()
    if model is None:
        raise NotFound()
    return model


def versions_of(*, model: RegisteredModel) -> QuerySet:
    return (
        ModelVersion.objects.filter(registered_model=model).select_related("registered_model__organization").order_by("-number")
    )


def version_of(*, model: RegisteredModel, number: int) -> ModelVersion:
    version = versions_of(model=model).filter(number=number).first()
    if version is None:
        raise NotFound()
    return version


def releases_of(*, model: RegisteredModel) -> QuerySet:
    return (
        Release.objects.filter(registered_model=model).select_related("from_version", "to_version", "actor").order_by("-number")
    )
