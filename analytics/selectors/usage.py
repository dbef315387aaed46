"""Usage of a model over time, read from the rollups only (never from the raw records)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from accounts.models import ApiKey
from accounts.selectors import for_organization
from analytics.models import Granularity, UsageRollup
from analytics.services.usage import day_floor, hour_floor, merge_rollups
from registry.models import ModelVersion, RegisteredModel

_FIELDS = (
    "bucket_start",
    "version_id",
    "variant",
    "api_key_id",
    "requests",
    "rows",
    "errors",
    "cache_hits",
    "latency_sum_ms",
    "latency_max_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_sketch",
    "outputs",
)

_EMPTY = {
    "requests": 0,
    "rows": 0,
    "errors": 0,
    "cache_hits": 0,
    "latency_sum_ms": 0.0,
    "latency_max_ms": None,
    "latency_p50_ms": None,
    "latency_p95_ms": None,
    "latency_p99_ms": None,
    "outputs": {},
}


def _figures(row: dict) -> dict:
    requests = row["requests"]
    return {
        "requests": requests,
        "rows": row["rows"],
        "errors": row["errors"],
        "cache_hits": row["cache_hits"],
        "error_rate": row["errors"] / requests if requests else None,
        "cache_hit_rate": row["cache_hits"] / requests if requests else None,
        "latency_ms": {
            "mean": row["latency_sum_ms"] / requests if requests else None,
            "p50": row["latency_p50_ms"],
            "p95": row["latency_p95_ms"],
            "p99": row["latency_p99_ms"],
            "max": row["latency_max_ms"],
        },
        "outputs": row["outputs"],
    }


def usage_of(*, model: RegisteredModel, start: datetime, end: datetime, granularity: str) -> dict:
    """Totals per bucket (all versions, variants and keys) and the breakdown behind them."""
    rows = list(
        for_organization(UsageRollup.objects, model.organization)
        .filter(registered_model=model, granularity=granularity, bucket_start__gte=start, bucket_start__lt=end)
        .order_by("bucket_start", "version_id", "variant", "api_key_id")
        .values(*_FIELDS)
    )
    numbers = dict(
        for_organization(ModelVersion.objects, model.organization).filter(registered_model=model).values_list("id", "number")
    )
    key_ids = {row["api_key_id"] for row in rows if row["api_key_id"]}
    prefixes = (
        dict(for_organization(ApiKey.objects, model.organization).filter(id__in=key_ids).values_list("id", "prefix"))
        if key_ids
        else {}
    )
    by_bucket: dict[datetime, list[dict]] = defaultdict(list)
    series = []
    for row in rows:
        by_bucket[row["bucket_start"]].append(row)
        series.append(
            {
                "start": row["bucket_start"],
                "version": numbers.get(row["version_id"]),
                "variant": row["variant"] or None,
                "api_key": prefixes.get(row["api_key_id"]) if row["api_key_id"] else None,
                **_figures(row),
            }
        )
    buckets = []
    for bucket_start, group in by_bucket.items():
        merged = merge_rollups(group) if len(group) > 1 else group[0]
        buckets.append({"start": bucket_start, **_figures(merged)})
    totals = merge_rollups(rows) if rows else None
    return {
        "model": model.full_name,
        "granularity": granularity,
        "start": start,
        "end": end,
        "totals": _figures(totals) if totals else None,
        "buckets": buckets,
        "series": series,
    }


def platform_usage(*, start: datetime, end: datetime, granularity: str = Granularity.DAY) -> list[dict]:
    """Platform-wide totals per bucket, for the operators' dashboard."""
    rows = (
        UsageRollup.objects.filter(granularity=granularity, bucket_start__gte=start, bucket_start__lt=end)
        .order_by("bucket_start")
        .values(*_FIELDS)
    )
    by_bucket: dict[datetime, list[dict]] = defaultdict(list)
    for row in rows:
        by_bucket[row["bucket_start"]].append(row)
    return [{"start": bucket_start, **_figures(merge_rollups(group))} for bucket_start, group in by_bucket.items()]


STEP = {Granularity.HOUR: timedelta(hours=1), Granularity.DAY: timedelta(days=1)}


def recent_usage(*, model: RegisteredModel, span: timedelta, granularity: str, now: datetime | None = None) -> dict:
    """usage_of for every bucket the last `span` touches (the current one included), with
    `timeline` listing each bucket in order, empty ones as zero requests, and `updated_at`,
    when the rollups behind these figures were last written."""
    now = now or timezone.now()
    floor = hour_floor if granularity == Granularity.HOUR else day_floor
    step = STEP[granularity]
    start, end = floor(now - span), floor(now) + step
    usage = usage_of(model=model, start=start, end=end, granularity=granularity)
    by_start = {bucket["start"]: bucket for bucket in usage["buckets"]}
    timeline, moment = [], start
    while moment < end:
        timeline.append(by_start.get(moment) or {"start": moment, **_figures(_EMPTY)})
        moment += step
    usage["timeline"] = timeline
    usage["updated_at"] = (
        for_organization(UsageRollup.objects, model.organization)
        .filter(registered_model=model)
        .aggregate(at=Max("updated_at"))["at"]
    )
    return usage


def rollup_interval_seconds() -> float:
    """How often beat runs the usage rollup: how stale the newest figures may be."""
    return float(settings.CELERY_BEAT_SCHEDULE["roll-up-usage"]["schedule"])
