"""Drift reports: a model's list, one report of a model or for a caller, and the latest per production version."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import F, Max, QuerySet

from accounts.models import Role
from accounts.principals import Caller
from accounts.selectors import for_organization, organizations_for_caller
from analytics.models import DriftReport
from platform_site.errors import NotFound
from registry.models import RegisteredModel


def reports_of(*, model: RegisteredModel) -> QuerySet:
    return (
        for_organization(DriftReport.objects, model.organization)
        .filter(registered_model=model)
        .select_related("registered_model__organization", "version", "created_by")
    )


def report_of(*, model: RegisteredModel, report_id: int) -> DriftReport:
    report = reports_of(model=model).filter(id=report_id).first()
    if report is None:
        raise NotFound()
    return report


def report_for_caller(*, caller: Caller, report_id: int) -> DriftReport:
    report = (
        DriftReport.objects.select_related("registered_model__organization", "version", "created_by")
        .filter(
            id=report_id,
            organization__in=organizations_for_caller(caller=caller, min_role=Role.VIEWER),
            registered_model__deleted_at__isnull=True,
        )
        .first()
    )
    if report is None:
        raise NotFound()
    return report


def latest_production_reports() -> list[DriftReport]:
    """The newest finished report of each live model's production version."""
    latest = (
        DriftReport.objects.filter(registered_model__deleted_at__isnull=True, status=DriftReport.Status.DONE)
        .filter(version_id=F("registered_model__production_version_id"))
        .values("version_id")
        .annotate(last=Max("id"))
        .values_list("last", flat=True)
    )
    return list(
        DriftReport.objects.filter(id__in=list(latest))
        .select_related("registered_model__organization", "version")
        .order_by("-created_at")
    )


def drift_gauge_samples() -> Iterator[tuple[list[str], float]]:
    """`modelhost_drift_detected` samples: ([org, model, version], 1.0 or 0.0)."""
    for report in latest_production_reports():
        model = report.registered_model
        yield [model.organization.slug, model.name, str(report.version.number)], 1.0 if report.is_drift else 0.0
