"""Usage rollups from prediction records, and the retention of the records themselves.

Each run re-computes, whole, every hour that received a record since the last run (read
by record id, so a late record with an old timestamp corrects its own hour), then every
day that contains one of those hours, from the day's hourly rows. Rows are upserted on
their unique key, so re-running an hour gives the same rows: the rollup is idempotent.
Ids are handed out when an insert starts but seen when it commits, so each run re-reads
from the largest id the run before it saw: an insert that stays uncommitted for longer
than one run interval (ingest commits batches in well under a second) would be missed.

On PostgreSQL an hour is one INSERT ... SELECT ... ON CONFLICT DO UPDATE with
percentile_cont (exact percentiles), the latency sketch's bin counts and the output
distribution; nothing per record passes through Python. A day's percentiles come from the
sum of its hours' sketches (analytics.statistics.sketches): within 1 % of the exact ones.
Other databases (SQLite under `make run`) take the same rows through numpy; a test checks
both give the same rows.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, TextField
from django.db.models.functions import Cast, TruncHour
from django.utils import timezone

from analytics.models import Granularity, RollupCursor, UsageRollup
from analytics.statistics import sketches
from analytics.statistics.quantiles import merge_quantiles, quantiles_of
from inference.models import PredictionRecord
from registry.models import ModelVersion

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
PERCENTILES = (0.5, 0.95, 0.99)
DECILES = tuple(i / 10 for i in range(11))
MAX_CLASSES = 200
FIRST_RUN_REREAD_IDS = 100_000
_COUNTS = ("requests", "rows", "errors", "cache_hits")


@dataclass
class RollupRun:
    hours: list[datetime] = field(default_factory=list)
    days: list[datetime] = field(default_factory=list)
    skipped_hours: list[datetime] = field(default_factory=list)
    seconds: float = 0.0
    scan_seconds: float = 0.0
    hours_seconds: float = 0.0
    days_seconds: float = 0.0


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def retention_days() -> int:
    """Raw records are kept this many days; never less than what live quality re-reads."""
    keep = int(getattr(settings, "ANALYTICS_RECORD_RETENTION_DAYS", 30))
    lookback = int(getattr(settings, "ANALYTICS_QUALITY_LOOKBACK_DAYS", 7))
    return max(keep, lookback + 1)


def retention_cutoff(now: datetime | None = None) -> datetime:
    """Records before this instant (a UTC midnight) may be deleted; hours before it are final."""
    return day_floor((now or timezone.now()) - timedelta(days=retention_days()))


def roll_up_usage(*, now: datetime | None = None) -> RollupRun:
    """Roll up what arrived since the last run: the touched hours, then their days.

    The first run rolls up every hour that has records; later runs, the hours of the
    records inserted since the run before last.
    """
    started = time.perf_counter()
    run = RollupRun()
    cursor, _ = RollupCursor.objects.get_or_create(name="usage")
    newest = PredictionRecord.objects.aggregate(n=Max("id"))["n"] or 0
    if newest <= cursor.settled_record_id:
        return run
    is_first_run = cursor.last_record_id == 0
    touched = _all_hours() if is_first_run else _hours_of_records_after(cursor.settled_record_id)
    cutoff = retention_cutoff(now)
    for hour in sorted(touched):
        # An hour before the retention cutoff that was rolled up may have lost its records
        # since (pruning rolls up first): its rows are final, and a straggler must not
        # overwrite them with a partial count. One never rolled up is rolled up now.
        is_final = hour < cutoff and UsageRollup.objects.filter(granularity=Granularity.HOUR, bucket_start=hour).exists()
        (run.skipped_hours if is_final else run.hours).append(hour)
    run.scan_seconds = time.perf_counter() - started
    _roll_up_hours_and_days(run)
    # Later runs trail by one run. The first run read everything: the next one re-reads only
    # the last FIRST_RUN_REREAD_IDS ids (inserts in flight during the first run), not all.
    if is_first_run:
        settled = max(0, newest - FIRST_RUN_REREAD_IDS)
    else:
        settled = max(cursor.last_record_id, cursor.settled_record_id)
    RollupCursor.objects.filter(pk=cursor.pk).update(settled_record_id=settled, last_record_id=newest, updated_at=timezone.now())
    run.seconds = time.perf_counter() - started
    if run.skipped_hours:
        logger.warning("usage rollup skipped %d hour(s) before the retention cutoff %s", len(run.skipped_hours), cutoff)
    return run


def _hours_of_records_after(record_id: int) -> list[datetime]:
    """The hours of records inserted after `record_id` (read by the primary key)."""
    return list(
        PredictionRecord.objects.filter(id__gt=record_id)
        .annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .values_list("hour", flat=True)
        .distinct()
    )


# Every hour that has a record, by skipping through the created_at index an hour at a time:
# one index probe per hour, instead of reading the whole table.
_ALL_HOURS_SQL = """
WITH RECURSIVE hours(hour) AS (
    SELECT date_trunc('hour', min(created_at) AT TIME ZONE 'UTC') FROM inference_predictionrecord
    UNION ALL
    SELECT (
        SELECT date_trunc('hour', r.created_at AT TIME ZONE 'UTC') FROM inference_predictionrecord r
        WHERE r.created_at >= (hours.hour + interval '1 hour') AT TIME ZONE 'UTC'
        ORDER BY r.created_at LIMIT 1
    )
    FROM hours WHERE hours.hour IS NOT NULL
)
SELECT hour AT TIME ZONE 'UTC' FROM hours WHERE hour IS NOT NULL
"""


def _all_hours() -> list[datetime]:
    if connection.vendor != "postgresql":
        return _hours_of_records_after(0)
    with connection.cursor() as cursor:
        cursor.execute(_ALL_HOURS_SQL)
        return [row[0] for row in cursor.fetchall()]


def roll_up_range(*, start: datetime, end: datetime) -> RollupRun:
    """Re-compute every hour in [start, end) and the days they touch (backfills, the bench)."""
    started = time.perf_counter()
    run = RollupRun()
    hour = hour_floor(start)
    while hour < end:
        run.hours.append(hour)
        hour += HOUR
    _roll_up_hours_and_days(run)
    run.seconds = time.perf_counter() - started
    return run


def concurrency() -> int:
    """Hours rolled up at once, each on its own database connection (PostgreSQL only)."""
    return max(1, int(getattr(settings, "ANALYTICS_ROLLUP_CONCURRENCY", 1)))


def _roll_up_hours_and_days(run: RollupRun) -> None:
    started = time.perf_counter()
    workers = concurrency() if connection.vendor == "postgresql" else 1
    if workers > 1 and len(run.hours) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_roll_up_hour_on_own_connection, run.hours))
    else:
        for hour in run.hours:
            roll_up_hour(hour)
    run.hours_seconds = time.perf_counter() - started
    run.days = sorted({day_floor(hour) for hour in run.hours})
    for day in run.days:
        roll_up_day(day)
    run.days_seconds = time.perf_counter() - started - run.hours_seconds


def _roll_up_hour_on_own_connection(hour: datetime) -> None:
    try:
        roll_up_hour(hour)
    finally:
        connection.close()  # this thread's connection; the pool's threads end with the run


def roll_up_hour(hour: datetime) -> None:
    hour = hour_floor(hour)
    if connection.vendor == "postgresql":
        _roll_up_hour_in_sql(hour)
    else:
        roll_up_hour_in_python(hour)


# --- PostgreSQL ---------------------------------------------------------------------------

# One statement per hour: the traffic figures with exact percentiles and the latency
# sketch (agg: a hash aggregate collects each group's latencies, and percentile_cont sorts
# only those, which is about a third cheaper than sorting the whole hour by group for an
# ordered-set aggregate; the sketch counts them per bin); the class counts of classifiers (classes: the hour's records grouped by
# their whole output array first, which hashes the stored jsonb without unpacking it, and
# only the few distinct arrays unpacked); the distribution of regressors' predictions
# (numeric, only when regressors exist). Each part reads the hour by the created_at index.
_AGG_SQL = (
    """
agg AS (
    SELECT g.*, pq.q, sk.sketch FROM (
        SELECT r.version_id, r.variant COLLATE "C" AS variant, COALESCE(r.api_key_id, 0) AS api_key_id,
               count(*) AS requests, sum(r.rows) AS rows,
               count(*) FILTER (WHERE r.status >= 400) AS errors,
               count(*) FILTER (WHERE r.cache_hit) AS cache_hits,
               sum(r.latency_ms) AS latency_sum, max(r.latency_ms) AS latency_max, array_agg(r.latency_ms) AS latencies
        FROM inference_predictionrecord r
        WHERE r.created_at >= %(start)s AND r.created_at < %(end)s
        GROUP BY r.version_id, r.variant COLLATE "C", COALESCE(r.api_key_id, 0)
    ) g
    CROSS JOIN LATERAL (
        SELECT percentile_cont(%(percentiles)s::float8[]) WITHIN GROUP (ORDER BY x) FROM unnest(g.latencies) AS x
    ) AS pq(q)
    CROSS JOIN LATERAL (
        SELECT jsonb_build_object(
            'bins', COALESCE(jsonb_object_agg(b.k, b.n) FILTER (WHERE b.k IS NOT NULL), '{}'::jsonb),
            'zero_count', COALESCE(sum(b.n) FILTER (WHERE b.k IS NULL), 0)
        )
        FROM (
            SELECT CASE WHEN x > %(sketch_min_positive)s THEN """
    + sketches.bin_key_sql("x")
    + """ END AS k, count(*) AS n
            FROM unnest(g.latencies) AS x GROUP BY 1
        ) b
    ) AS sk(sketch)
),
classes AS (
    SELECT version_id, variant, api_key_id, jsonb_build_object('kind', 'classes', 'counts', jsonb_object_agg(value, n)) AS outputs
    FROM (
        SELECT g.version_id, g.variant, g.api_key_id, o.value #>> '{}' AS value, sum(g.n) AS n
        FROM (
            SELECT r.version_id, r.variant COLLATE "C" AS variant, COALESCE(r.api_key_id, 0) AS api_key_id, r.outputs,
                   count(*) AS n
            FROM inference_predictionrecord r
            WHERE r.created_at >= %(start)s AND r.created_at < %(end)s AND r.status < 400
              AND r.version_id NOT IN (SELECT id FROM registry_modelversion WHERE task = 'regression')
            GROUP BY 1, 2, 3, 4
        ) g
        CROSS JOIN LATERAL jsonb_array_elements(
            CASE WHEN jsonb_typeof(g.outputs) = 'array' THEN g.outputs ELSE '[]'::jsonb END
        ) AS o(value)
        WHERE jsonb_typeof(o.value) IN ('string', 'number', 'boolean')
        GROUP BY 1, 2, 3, 4
    ) c
    GROUP BY 1, 2, 3
)"""
)

_NUMERIC_SQL = """,
numeric AS (
    SELECT r.version_id, r.variant COLLATE "C" AS variant, COALESCE(r.api_key_id, 0) AS api_key_id,
           jsonb_build_object(
               'kind', 'numeric', 'count', count(*), 'sum', sum(o.value::float8),
               'min', min(o.value::float8), 'max', max(o.value::float8),
               'deciles', to_jsonb(percentile_cont(%(deciles)s::float8[]) WITHIN GROUP (ORDER BY o.value::float8))
           ) AS outputs
    FROM inference_predictionrecord r
    CROSS JOIN LATERAL jsonb_array_elements(r.outputs) AS o(value)
    WHERE r.created_at >= %(start)s AND r.created_at < %(end)s AND r.status < 400 AND jsonb_typeof(r.outputs) = 'array'
      AND r.version_id IN (SELECT id FROM registry_modelversion WHERE task = 'regression') AND jsonb_typeof(o.value) = 'number'
    GROUP BY 1, 2, 3
)"""

_INSERT_SQL = """
INSERT INTO analytics_usagerollup (
    granularity, bucket_start, organization_id, registered_model_id, version_id, variant, api_key_id,
    requests, rows, errors, cache_hits, latency_sum_ms, latency_max_ms,
    latency_p50_ms, latency_p95_ms, latency_p99_ms, latency_sketch, outputs, updated_at
)
SELECT 'hour', %(start)s, m.organization_id, v.registered_model_id, a.version_id, a.variant, a.api_key_id,
       a.requests, a.rows, a.errors, a.cache_hits, a.latency_sum, a.latency_max,
       a.q[1], a.q[2], a.q[3], a.sketch, COALESCE(c.outputs, {numeric_outputs} '{{}}'::jsonb), now()
FROM agg a
JOIN registry_modelversion v ON v.id = a.version_id
JOIN registry_registeredmodel m ON m.id = v.registered_model_id
LEFT JOIN classes c ON c.version_id = a.version_id AND c.variant = a.variant AND c.api_key_id = a.api_key_id
{numeric_join}
ON CONFLICT (granularity, bucket_start, version_id, variant, api_key_id) DO UPDATE SET
    organization_id = EXCLUDED.organization_id, registered_model_id = EXCLUDED.registered_model_id,
    requests = EXCLUDED.requests, rows = EXCLUDED.rows, errors = EXCLUDED.errors, cache_hits = EXCLUDED.cache_hits,
    latency_sum_ms = EXCLUDED.latency_sum_ms, latency_max_ms = EXCLUDED.latency_max_ms,
    latency_p50_ms = EXCLUDED.latency_p50_ms, latency_p95_ms = EXCLUDED.latency_p95_ms, latency_p99_ms = EXCLUDED.latency_p99_ms,
    latency_sketch = EXCLUDED.latency_sketch, outputs = EXCLUDED.outputs, updated_at = EXCLUDED.updated_at
"""


def hour_sql(*, with_regressors: bool) -> str:
    if not with_regressors:
        return "WITH" + _AGG_SQL + _INSERT_SQL.format(numeric_outputs="", numeric_join="")
    return (
        "WITH"
        + _AGG_SQL
        + _NUMERIC_SQL
        + _INSERT_SQL.format(
            numeric_outputs="n.outputs,",
            numeric_join=(
                "LEFT JOIN numeric n ON n.version_id = a.version_id AND n.variant = a.variant AND n.api_key_id = a.api_key_id"
            ),
        )
    )


def _roll_up_hour_in_sql(hour: datetime) -> None:
    params = {
        "start": hour,
        "end": hour + HOUR,
        "percentiles": list(PERCENTILES),
        "deciles": list(DECILES),
        **sketches.sql_params(),
    }
    with_regressors = ModelVersion.objects.filter(task="regression").exists()
    with transaction.atomic(), connection.cursor() as cursor:
        # The hour's records are sorted in memory rather than spilled to disk.
        cursor.execute("SET LOCAL work_mem = %s", [getattr(settings, "ANALYTICS_ROLLUP_WORK_MEM", "256MB")])
        cursor.execute(hour_sql(with_regressors=with_regressors), params)


# --- Any database, through numpy ----------------------------------------------------------


def roll_up_hour_in_python(hour: datetime) -> None:
    """The same rows as the SQL path, computed in Python (SQLite; and the test of the SQL)."""
    hour = hour_floor(hour)
    records = PredictionRecord.objects.filter(created_at__gte=hour, created_at__lt=hour + HOUR).values_list(
        "version_id", "variant", "api_key_id", "rows", "status", "cache_hit", "latency_ms", "outputs"
    )
    groups: dict[tuple, dict] = defaultdict(
        lambda: {"requests": 0, "rows": 0, "errors": 0, "cache_hits": 0, "latency": [], "outputs": []}
    )
    for version_id, variant, api_key_id, rows, status, cache_hit, latency_ms, outputs in records.iterator(chunk_size=10_000):
        group = groups[(version_id, variant, api_key_id or 0)]
        group["requests"] += 1
        group["rows"] += rows
        group["errors"] += status >= 400
        group["cache_hits"] += bool(cache_hit)
        group["latency"].append(latency_ms)
        if status < 400 and isinstance(outputs, list):
            group["outputs"].extend(outputs)
    versions = {
        v.id: v for v in ModelVersion.objects.filter(id__in={key[0] for key in groups}).select_related("registered_model")
    }
    now = timezone.now()
    rollups = []
    for (version_id, variant, api_key_id), group in groups.items():
        version = versions.get(version_id)
        if version is None:
            continue
        latency = np.asarray(group["latency"], dtype=np.float64)
        p50, p95, p99 = quantiles_of(latency, PERCENTILES)
        rollups.append(
            UsageRollup(
                granularity=Granularity.HOUR,
                bucket_start=hour,
                organization_id=version.registered_model.organization_id,
                registered_model_id=version.registered_model_id,
                version_id=version_id,
                variant=variant,
                api_key_id=api_key_id,
                requests=group["requests"],
                rows=group["rows"],
                errors=group["errors"],
                cache_hits=group["cache_hits"],
                latency_sum_ms=float(latency.sum()),
                latency_max_ms=float(latency.max()),
                latency_p50_ms=p50,
                latency_p95_ms=p95,
                latency_p99_ms=p99,
                latency_sketch=sketches.sketch_of(group["latency"]),
                outputs=_output_distribution(group["outputs"], task=version.task),
                updated_at=now,
            )
        )
    _upsert(rollups)


def _output_distribution(outputs: list, *, task: str) -> dict:
    if not outputs:
        return {}
    if task == "regression":
        values = np.asarray([v for v in outputs if isinstance(v, (int, float)) and not isinstance(v, bool)], dtype=np.float64)
        if len(values) == 0:
            return {}
        return {
            "kind": "numeric",
            "count": len(values),
            "sum": float(values.sum()),
            "min": float(values.min()),
            "max": float(values.max()),
            "deciles": quantiles_of(values, DECILES),
        }
    counts: dict[str, int] = defaultdict(int)
    for value in outputs:
        if isinstance(value, (str, int, float)):  # bool is an int; lists and nulls are skipped, as in SQL
            counts[_json_text(value)] += 1
    return {"kind": "classes", "counts": dict(counts)} if counts else {}


def _json_text(value: str | float) -> str:
    """A JSON scalar as PostgreSQL's `#>> '{}'` writes it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return orjson.dumps(value).decode()


_UPDATE_FIELDS = [
    "organization",
    "registered_model",
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
    "updated_at",
]


def _upsert(rollups: list[UsageRollup]) -> None:
    if not rollups:
        return
    UsageRollup.objects.bulk_create(
        rollups,
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["granularity", "bucket_start", "version", "variant", "api_key_id"],
        update_fields=_UPDATE_FIELDS,
    )


# --- Days from hours ----------------------------------------------------------------------


def roll_up_day(day: datetime) -> None:
    """A day's rows from its hourly rows: sums, and percentiles from the sum of the hours' sketches."""
    day = day_floor(day)
    # The JSON columns come as text and go through orjson: a day has tens of thousands of
    # hourly rows, and Django's per-value json.loads was most of this function's time.
    hours = (
        UsageRollup.objects.filter(granularity=Granularity.HOUR, bucket_start__gte=day, bucket_start__lt=day + DAY)
        .annotate(sketch_text=Cast("latency_sketch", TextField()), outputs_text=Cast("outputs", TextField()))
        .values(
            "organization_id",
            "registered_model_id",
            "version_id",
            "variant",
            "api_key_id",
            *_COUNTS,
            "latency_sum_ms",
            "latency_max_ms",
            "sketch_text",
            "outputs_text",
        )
    )
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in hours.iterator(chunk_size=5000):
        row["latency_sketch"] = orjson.loads(row.pop("sketch_text"))
        row["outputs"] = orjson.loads(row.pop("outputs_text"))
        groups[(row["version_id"], row["variant"], row["api_key_id"])].append(row)
    now = timezone.now()
    _upsert([_merge_rows(group, granularity=Granularity.DAY, bucket_start=day, updated_at=now) for group in groups.values()])


def _merge_rows(rows: list[dict], *, granularity: str, bucket_start: datetime, updated_at: datetime) -> UsageRollup:
    first = rows[0]
    merged = merge_rollups(rows)
    return UsageRollup(
        granularity=granularity,
        bucket_start=bucket_start,
        organization_id=first["organization_id"],
        registered_model_id=first["registered_model_id"],
        version_id=first["version_id"],
        variant=first["variant"],
        api_key_id=first["api_key_id"],
        updated_at=updated_at,
        **merged,
    )


def merge_rollups(rows: list[dict]) -> dict:
    """Counts summed, latency sketches merged (and percentiles read from them), output distributions combined."""
    merged = {name: sum(row[name] for row in rows) for name in _COUNTS}
    sketch = sketches.merge_sketches(row["latency_sketch"] for row in rows)
    p50, p95, p99 = sketches.quantiles(sketch, PERCENTILES)
    merged.update(
        latency_sum_ms=sum(row["latency_sum_ms"] for row in rows),
        latency_max_ms=max(row["latency_max_ms"] for row in rows),
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        latency_sketch=sketch,
        outputs=merge_outputs([row["outputs"] for row in rows]),
    )
    return merged


def merge_outputs(distributions: list[dict]) -> dict:
    distributions = [d for d in distributions if d]
    if not distributions:
        return {}
    if distributions[0].get("kind") == "numeric":
        numeric = [d for d in distributions if d.get("kind") == "numeric"]
        deciles = merge_quantiles([(d["count"], d["deciles"]) for d in numeric], DECILES, DECILES)
        return {
            "kind": "numeric",
            "count": sum(d["count"] for d in numeric),
            "sum": sum(d["sum"] for d in numeric),
            "min": min(d["min"] for d in numeric),
            "max": max(d["max"] for d in numeric),
            "deciles": deciles,
        }
    counts: dict[str, int] = defaultdict(int)
    for d in distributions:
        for value, n in d.get("counts", {}).items():
            counts[value] += n
    if len(counts) > MAX_CLASSES:
        kept = dict(sorted(counts.items(), key=lambda item: -item[1])[:MAX_CLASSES])
        kept["(other)"] = sum(counts.values()) - sum(kept.values())
        counts = kept
    return {"kind": "classes", "counts": dict(counts)}


# --- Retention ------------------------------------------------------------------------------


def prune_prediction_records(*, now: datetime | None = None, batch_size: int = 50_000) -> int:
    """Delete records older than the retention window, in batches; rollups stay.

    Rolls up first, so nothing is deleted before it is counted.
    """
    roll_up_usage(now=now)
    cutoff = retention_cutoff(now)
    deleted = 0
    table = PredictionRecord._meta.db_table
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE created_at < %s ORDER BY created_at LIMIT %s)",
                [cutoff, batch_size],
            )
            count = cursor.rowcount
        deleted += count
        if count < batch_size:
            break
    if deleted:
        logger.info("pruned %d prediction records older than %s", deleted, cutoff)
    return deleted
