"""The operators' dashboard: platform-wide figures from the rollups, and what needs attention."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.apps import apps
from django.db import DatabaseError, transaction
from django.db.models import Count, F, QuerySet, Sum
from django.utils import timezone

from analytics.models import Granularity, UsageRollup
from analytics.selectors.drift import latest_production_reports
from analytics.selectors.experiments import experiment_results, running_experiments
from analytics.selectors.usage import platform_usage
from analytics.services.usage import day_floor, hour_floor
from registry.models import ModelVersion

logger = logging.getLogger(__name__)
MAX_EXPERIMENTS_SHOWN = 10
TOP = 10


def _top(start: datetime, end: datetime, *labels: str) -> list[dict]:
    return list(
        UsageRollup.objects.filter(granularity=Granularity.DAY, bucket_start__gte=start, bucket_start__lt=end)
        .values(*labels)
        .annotate(requests=Sum("requests"), errors=Sum("errors"), rows=Sum("rows"))
        .order_by("-requests")[:TOP]
    )


def batch_jobs_by_state() -> list[dict] | None:
    """Jobs per state, or None while inference has no BatchJob model (the panel is hidden)."""
    try:
        model = apps.get_model("inference", "BatchJob")
    except LookupError:
        return None
    try:
        with transaction.atomic():  # a savepoint: a failure here must not poison the page's transaction
            return list(model.objects.values("status").annotate(jobs=Count("id")).order_by("status"))
    except DatabaseError as exc:  # its table may not be migrated yet on this database
        logger.warning("batch job panel unavailable: %s", exc)
        return None


def production_versions() -> QuerySet:
    return (
        ModelVersion.objects.filter(registered_model__production_version=F("id"), registered_model__deleted_at__isnull=True)
        .select_related("registered_model__organization")
        .order_by("registered_model__organization__slug", "registered_model__name")
    )


def platform_overview(*, now: datetime | None = None, days: int = 14, hours: int = 48) -> dict:
    now = now or timezone.now()
    day_end = day_floor(now) + timedelta(days=1)
    day_start = day_end - timedelta(days=days)
    hour_end = hour_floor(now) + timedelta(hours=1)
    running = running_experiments()
    return {
        "daily": platform_usage(start=day_start, end=day_end, granularity=Granularity.DAY),
        "hourly": platform_usage(start=hour_end - timedelta(hours=hours), end=hour_end, granularity=Granularity.HOUR),
        "top_organizations": _top(day_start, day_end, "organization__slug"),
        "top_models": _top(day_start, day_end, "registered_model__organization__slug", "registered_model__name"),
        "drifting": [report for report in latest_production_reports() if report.is_drift],
        "running_experiments": len(running),
        "experiments": [{"experiment": e, "results": experiment_results(experiment=e)} for e in running[:MAX_EXPERIMENTS_SHOWN]],
        "batch_jobs": batch_jobs_by_state(),
        "production_versions": production_versions(),
        "days": days,
        "hours": hours,
    }
