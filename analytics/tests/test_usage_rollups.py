from datetime import timedelta

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from analytics.models import Granularity, UsageRollup
from analytics.services import usage
from analytics.statistics import sketches
from analytics.tests import factories as af
from inference.models import PredictionRecord
from registry.tests import factories as rf

pytestmark = pytest.mark.django_db

ROLLUP_FIELDS = [
    "granularity",
    "bucket_start",
    "organization_id",
    "registered_model_id",
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
]


def rollups(granularity=Granularity.HOUR):
    return list(
        UsageRollup.objects.filter(granularity=granularity)
        .order_by("bucket_start", "version_id", "variant", "api_key_id")
        .values(*ROLLUP_FIELDS)
    )


@pytest.fixture
def hour():
    return usage.day_floor(timezone.now() - timedelta(days=2)) + timedelta(hours=10)


@pytest.fixture
def iris(tenant_a):
    model, versions = af.iris_model(tenant_a, versions=2)
    return model, versions


def test_hourly_rollup_counts_and_exact_percentiles(tenant_a, iris, hour):
    _, (v1, v2) = iris
    rng = np.random.default_rng(7)
    latencies = rng.gamma(2.0, 3.0, size=301)
    records = [
        af.record(
            v1,
            at=hour + timedelta(seconds=i * 10),
            lat=float(lat),
            key=tenant_a.api_key_id,
            out=[i % 3],
            rows=1 + i % 2,
            hit=i % 4 == 0,
            status=500 if i % 50 == 0 else 200,
        )
        for i, lat in enumerate(latencies)
    ]
    records += [af.record(v2, at=hour + timedelta(minutes=5), lat=2.0, variant="v2", out=[1, 1, 2], rows=3)]
    af.ingest(records)

    run = usage.roll_up_usage()

    assert run.hours == [hour]
    first, second = rollups()
    assert (first["version_id"], first["api_key_id"], first["variant"]) == (v1.id, tenant_a.api_key_id, "")
    assert first["requests"] == 301
    assert first["rows"] == sum(1 + i % 2 for i in range(301))
    assert first["errors"] == 7  # i = 0, 50, ..., 300
    assert first["cache_hits"] == 76
    assert first["latency_sum_ms"] == pytest.approx(latencies.sum())
    assert first["latency_max_ms"] == pytest.approx(latencies.max())
    assert first["latency_p50_ms"] == pytest.approx(np.quantile(latencies, 0.5), rel=1e-12)
    assert first["latency_p95_ms"] == pytest.approx(np.quantile(latencies, 0.95), rel=1e-12)
    assert first["latency_p99_ms"] == pytest.approx(np.quantile(latencies, 0.99), rel=1e-12)
    assert first["latency_sketch"] == sketches.sketch_of(latencies.tolist())
    successful = [i for i in range(301) if i % 50]
    assert first["outputs"] == {"kind": "classes", "counts": {str(c): sum(1 for i in successful if i % 3 == c) for c in range(3)}}
    assert (second["version_id"], second["api_key_id"], second["variant"]) == (v2.id, 0, "v2")
    assert second["outputs"] == {"kind": "classes", "counts": {"1": 2, "2": 1}}


def test_rolling_up_an_hour_again_gives_the_same_rows(iris, hour):
    _, (v1, _) = iris
    af.ingest([af.record(v1, at=hour + timedelta(minutes=m), lat=float(m)) for m in range(60)])
    usage.roll_up_range(start=hour, end=hour + timedelta(hours=1))
    first = list(UsageRollup.objects.order_by("id").values("id", *ROLLUP_FIELDS))

    usage.roll_up_range(start=hour, end=hour + timedelta(hours=1))
    usage.roll_up_usage()

    assert list(UsageRollup.objects.order_by("id").values("id", *ROLLUP_FIELDS)) == first


def test_a_late_record_corrects_its_own_hour(iris, hour):
    _, (v1, _) = iris
    af.ingest([af.record(v1, at=hour + timedelta(minutes=1), lat=1.0), af.record(v1, at=hour + timedelta(hours=3), lat=1.0)])
    usage.roll_up_usage()
    usage.roll_up_usage()
    assert [r["requests"] for r in rollups()] == [1, 1]

    af.ingest([af.record(v1, at=hour + timedelta(minutes=59), lat=9.0)])  # arrives hours after it was served
    run = usage.roll_up_usage()

    assert run.hours == [hour]
    late_hour, later_hour = rollups()
    assert (late_hour["requests"], late_hour["latency_max_ms"]) == (2, 9.0)
    assert later_hour["requests"] == 1
    (day,) = rollups(Granularity.DAY)
    assert day["requests"] == 3


def test_a_record_committed_after_a_run_read_past_it_is_still_counted(iris, hour):
    """The cursor trails by one run: ids below the last run's maximum are read once more."""
    _, (v1, _) = iris
    af.ingest([af.record(v1, at=hour, lat=1.0)])
    usage.roll_up_usage()
    # Simulate an insert that took a smaller id but committed after the run above.
    late = af.record(v1, at=hour + timedelta(minutes=2), lat=1.0)
    af.ingest([late])
    PredictionRecord.objects.filter(prediction_id=late["id"]).update(id=0)
    usage.roll_up_usage()
    assert rollups()[0]["requests"] == 2


@pytest.mark.parametrize(
    "hours, low, high",
    [pytest.param(24, 10, 60, id="quiet-day-10-60-per-hour"), pytest.param(4, 900, 1100, id="busy-hours-1000-per-hour")],
)
def test_a_days_percentiles_are_within_the_sketchs_accuracy_of_numpys(iris, hour, hours, low, high):
    _, (v1, _) = iris
    day = usage.day_floor(hour)
    rng = np.random.default_rng(18)
    samples = [rng.lognormal(mean=3.0 + 0.3 * (h % 4), sigma=0.35, size=rng.integers(low, high + 1)) for h in range(hours)]
    af.ingest(
        [
            af.record(v1, at=day + timedelta(hours=h, seconds=i), lat=float(lat))
            for h, sample in enumerate(samples)
            for i, lat in enumerate(sample)
        ]
    )

    usage.roll_up_usage()

    (row,) = rollups(Granularity.DAY)
    union = np.concatenate(samples)
    assert (row["bucket_start"], row["requests"]) == (day, len(union))
    assert row["latency_sum_ms"] == pytest.approx(union.sum())
    assert row["latency_max_ms"] == pytest.approx(union.max())
    assert row["latency_sketch"] == sketches.sketch_of(union.tolist())  # the hours' sum is the day's own sketch
    for q, name in ((0.5, "latency_p50_ms"), (0.95, "latency_p95_ms"), (0.99, "latency_p99_ms")):
        assert row[name] == pytest.approx(np.quantile(union, q), rel=sketches.RELATIVE_ACCURACY), name


def test_python_rollup_gives_the_same_rows_as_the_sql_rollup(tenant_a, iris, hour):
    """SQLite deployments use the numpy path; it must agree with PostgreSQL's."""
    _model, (v1, v2) = iris
    from accounts.principals import Caller
    from registry import services as registry_services

    regressor_model = registry_services.create_model(
        caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="reg"
    )
    regressor = rf.create_version(regressor_model, rf.regression_model(), promote=True)
    rng = np.random.default_rng(11)
    records = []
    for i in range(200):
        version = (v1, v2, regressor)[i % 3]
        out = [float(x) for x in rng.normal(size=2)] if version is regressor else [int(i % 3), "setosa"]
        records.append(
            af.record(
                version,
                at=hour + timedelta(seconds=i * 7),
                lat=float(rng.exponential(4)),
                key=tenant_a.api_key_id if i % 2 else None,
                variant="v1" if i % 5 == 0 else None,
                out=out,
                rows=2,
                status=200 if i % 9 else 422,
                hit=i % 6 == 0,
            )
        )
    af.ingest(records)

    usage.roll_up_hour(hour)
    from_sql = rollups()
    UsageRollup.objects.all().delete()
    usage.roll_up_hour_in_python(hour)
    from_python = rollups()

    assert len(from_sql) == len(from_python) > 6
    for sql_row, python_row in zip(from_sql, from_python, strict=True):
        for name in ROLLUP_FIELDS:
            if name == "outputs" and sql_row[name].get("kind") == "numeric":
                assert sql_row[name]["count"] == python_row[name]["count"]
                for part in ("sum", "min", "max", "deciles"):
                    assert sql_row[name][part] == pytest.approx(python_row[name][part], rel=1e-9), part
            elif isinstance(sql_row[name], float):
                assert sql_row[name] == pytest.approx(python_row[name], rel=1e-9), name
            else:
                assert sql_row[name] == python_row[name], name


def test_retention_deletes_old_records_in_bulk_and_keeps_rollups(settings, iris):
    settings.ANALYTICS_RECORD_RETENTION_DAYS = 30
    settings.ANALYTICS_QUALITY_LOOKBACK_DAYS = 7
    _, (v1, _) = iris
    now = timezone.now()
    old_hour = usage.hour_floor(now - timedelta(days=40))
    recent_hour = usage.hour_floor(now - timedelta(days=1))
    af.ingest([af.record(v1, at=old_hour + timedelta(minutes=i), lat=1.0) for i in range(5)])
    af.ingest([af.record(v1, at=recent_hour + timedelta(minutes=i), lat=1.0) for i in range(3)])

    deleted = usage.prune_prediction_records(now=now, batch_size=2)

    assert deleted == 5
    assert PredictionRecord.objects.count() == 3
    assert PredictionRecord.objects.filter(created_at__lt=usage.retention_cutoff(now)).count() == 0
    assert [(r["bucket_start"], r["requests"]) for r in rollups()] == [(old_hour, 5), (recent_hour, 3)]
    assert len(rollups(Granularity.DAY)) == 2

    # A straggler for the pruned hour must not shrink that hour to one request.
    af.ingest([af.record(v1, at=old_hour + timedelta(minutes=30), lat=1.0)])
    run = usage.roll_up_usage(now=now)
    assert run.skipped_hours == [old_hour]
    assert rollups()[0]["requests"] == 5


def test_retention_never_drops_what_live_quality_still_reads(settings):
    settings.ANALYTICS_RECORD_RETENTION_DAYS = 1
    settings.ANALYTICS_QUALITY_LOOKBACK_DAYS = 7
    assert usage.retention_days() == 8


# --- GET .../usage ----------------------------------------------------------------------------


def usage_url(**params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"/api/v1/models/acme/iris/usage?{query}"


def test_usage_api_answers_buckets_and_breakdown(tenant_a, iris, hour):
    _, (v1, v2) = iris
    af.ingest(
        [af.record(v1, at=hour + timedelta(minutes=i), lat=float(i + 1), key=tenant_a.api_key_id) for i in range(10)]
        + [af.record(v2, at=hour + timedelta(hours=1, minutes=i), lat=5.0, status=500) for i in range(4)]
    )
    usage.roll_up_usage()
    start = (hour - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    end = (hour + timedelta(hours=3)).isoformat().replace("+00:00", "Z")

    response = tenant_a.key_client().get(usage_url(start=start, end=end, granularity="hour"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["granularity"] == "hour"
    assert [b["requests"] for b in body["buckets"]] == [10, 4]
    assert body["buckets"][0]["latency_ms"]["p50"] == pytest.approx(5.5)
    assert body["buckets"][1]["error_rate"] == 1.0
    assert body["totals"]["requests"] == 14
    prefix = tenant_a.api_key.split("_")[1]
    assert [(s["version"], s["api_key"], s["requests"]) for s in body["series"]] == [(1, prefix, 10), (2, None, 4)]

    daily = tenant_a.jwt_client().get(usage_url(start=start, end=end, granularity="day")).json()
    assert [b["requests"] for b in daily["buckets"]] == [14]


def test_usage_api_reads_rollups_only(tenant_a, iris, hour):
    _, (v1, _) = iris
    af.ingest([af.record(v1, at=hour + timedelta(seconds=i), lat=1.0) for i in range(50)])
    usage.roll_up_usage()
    client = tenant_a.key_client()
    client.get(usage_url(granularity="day"))  # warm the key cache
    with CaptureQueriesContext(connection) as queries:
        response = client.get(usage_url(granularity="day"))
    assert response.status_code == 200
    assert not [q["sql"] for q in queries.captured_queries if "inference_predictionrecord" in q["sql"]]


@pytest.mark.parametrize(
    "params, field",
    [
        pytest.param({"granularity": "week"}, "granularity", id="unknown-granularity"),
        pytest.param({"start": "yesterday"}, "start", id="start-not-iso"),
        pytest.param({"end": "2026-13-45"}, "end", id="end-not-a-date"),
        pytest.param({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start", id="start-after-end"),
        pytest.param({"start": "2025-01-01", "end": "2026-01-01", "granularity": "hour"}, "start", id="too-many-hours"),
    ],
)
def test_usage_api_rejects_bad_ranges(tenant_a, iris, params, field):
    response = tenant_a.key_client().get(usage_url(**params))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_input"
    assert response.json()["errors"][0]["field"] == field


@pytest.mark.django_db(transaction=True)
def test_hours_rolled_up_concurrently_give_the_same_rows(settings, tenant_a):
    _, (v1, v2) = af.iris_model(tenant_a, versions=2)
    hour = usage.day_floor(timezone.now() - timedelta(days=2)) + timedelta(hours=3)
    af.ingest([af.record((v1, v2)[i % 2], at=hour + timedelta(minutes=i), lat=float(i % 13)) for i in range(6 * 60)])
    usage.roll_up_range(start=hour, end=hour + timedelta(hours=6))
    sequential = rollups()

    settings.ANALYTICS_ROLLUP_CONCURRENCY = 3
    UsageRollup.objects.all().delete()
    usage.roll_up_range(start=hour, end=hour + timedelta(hours=6))

    assert rollups() == sequential
    assert len(sequential) == 12


@pytest.mark.django_db(transaction=True)
def test_the_migration_turns_stored_grids_into_sketches_and_rolls_up_kept_hours_again(tenant_a):
    from django.db.migrations.executor import MigrationExecutor

    _, (v1,) = af.iris_model(tenant_a)
    hour = usage.hour_floor(timezone.now() - timedelta(days=3))
    grid = tuple(i / 100 for i in range(100)) + tuple(0.99 + i / 1000 for i in range(1, 10)) + (1.0,)
    latencies = np.random.default_rng(5).gamma(2.0, 3.0, size=1000)
    executor = MigrationExecutor(connection)
    executor.migrate([("analytics", "0003_replay")])
    old_apps = executor.loader.project_state([("analytics", "0003_replay")]).apps
    old_apps.get_model("analytics", "UsageRollup").objects.create(
        granularity="hour",
        bucket_start=hour,
        organization_id=tenant_a.organization.id,
        registered_model_id=v1.registered_model_id,
        version_id=v1.id,
        requests=1000,
        latency_quantiles=np.quantile(latencies, grid).tolist(),
    )
    old_apps.get_model("analytics", "RollupCursor").objects.create(name="usage", last_record_id=500, settled_record_id=400)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    row = UsageRollup.objects.get()
    assert sketches.sketch_count(row.latency_sketch) == pytest.approx(1000)
    p50, p99 = sketches.quantiles(row.latency_sketch, [0.5, 0.99])
    assert p50 == pytest.approx(np.quantile(latencies, 0.5), rel=0.03)
    assert p99 == pytest.approx(np.quantile(latencies, 0.99), rel=0.03)
    assert usage.RollupCursor.objects.values_list("last_record_id", "settled_record_id").get() == (0, 0)
