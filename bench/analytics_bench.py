"""Analytics benchmark: roll up N synthetic prediction records, and one drift report.

    .venv/bin/python bench/analytics_bench.py                    # 10 million records, 100 000-row drift window
    .venv/bin/python bench/analytics_bench.py --records 1000000  # a quicker run

Needs PostgreSQL. Uses its own database (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/analytics_bench), dropped and migrated at the start.

What is measured, and how the data gets there:

1. Ingestion: `inference.records.ingest_records` (the worker's bulk insert) on a sample of
   --ingest-sample records, to give its rate. The N rollup records are then loaded with
   PostgreSQL COPY in chunks (the same rows ingest_records would write: the same table,
   indexes and columns, one 4-feature input row and one output each), because writing 10
   million rows through Django's bulk_create would take most of the time budget.
2. Rollup: `analytics.services.usage.roll_up_usage()`, exactly what the beat task runs, from
   an empty cursor over N records spread over 24 hours (every hour touched, 25 rollups:
   24 hours and their day), after a VACUUM ANALYZE (as autovacuum would have run by then).
   Records/s = N / seconds. Then the same 24 hours again with --concurrency hours at a
   time (ANALYTICS_ROLLUP_CONCURRENCY), each on its own database connection.
3. Drift: `analytics.services.drift.run_drift_report()` for a 20-feature version with a
   10 000-row reference CSV, over a window of --drift-rows rows written by ingest_records
   (one row per record, the worst case for per-record overhead); half the features shifted.

Per phase: wall seconds, this process's CPU seconds, and its peak resident memory (VmHWM,
reset before each phase). PostgreSQL's own CPU and memory are not in these figures; the
machine's load average is printed with them, since other work shares the CPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/analytics_bench")
os.environ["DATABASE_URL"] = BENCH_DATABASE_URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform_site.settings")
os.environ.setdefault("SECRET_KEY", "analytics-bench-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("ALLOWED_HOSTS", "localhost")
os.environ.setdefault("MODEL_STORAGE_ROOT", str(Path(tempfile.gettempdir()) / "mh-analytics-bench-models"))
os.environ.pop("REDIS_URL", None)  # the bench needs no cache; rollups and drift are database work

N_FEATURES = 20
ORGS, MODELS_PER_ORG, VERSIONS_PER_MODEL, KEYS_PER_ORG = 20, 3, 2, 4


def recreate_database() -> None:
    import psycopg

    parts = urlsplit(BENCH_DATABASE_URL)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


@contextmanager
def measured(label: str, results: dict):
    """Wall seconds, this process's CPU seconds, and its peak resident memory during the phase.

    The peak is Linux's VmHWM, reset before the phase through /proc/self/clear_refs (no
    tracing overhead, unlike tracemalloc, which slowed the measured code threefold).
    PostgreSQL's own CPU and memory are not in these figures.
    """
    _reset_peak_rss()
    backend = _backend_pid()
    started, cpu, db_cpu = time.perf_counter(), time.process_time(), _cpu_seconds_of(backend)
    yield
    results[label] = {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "db_cpu_seconds": _cpu_seconds_of(backend) - db_cpu,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _cpu_seconds_of(pid: int) -> float:
    """User + system CPU of the PostgreSQL backend serving this process (same machine only)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _reset_peak_rss() -> None:
    # Not Linux (no clear_refs): the peak is then the process's peak so far.
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return max_rss_mib()


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_fleet():
    """Organizations, models and versions the synthetic records point at (no artifacts needed)."""
    from accounts.models import Organization
    from registry.models import ModelVersion, RegisteredModel

    versions = []
    for o in range(ORGS):
        org = Organization.objects.create(slug=f"bench-org-{o}", name=f"Bench org {o}")
        for m in range(MODELS_PER_ORG):
            model = RegisteredModel.objects.create(organization=org, name=f"model-{m}", task="classification")
            for n in range(1, VERSIONS_PER_MODEL + 1):
                versions.append(
                    ModelVersion.objects.create(
                        registered_model=model,
                        number=n,
                        artifact="bench/none.joblib",
                        sha256="0" * 64,
                        size_bytes=1,
                        format="joblib",
                        serving_sklearn_version="bench",
                        estimator_class="Bench",
                        task="classification",
                        classes=[0, 1, 2],
                        signature={"inputs": [{"name": f"f{i}", "type": "double"} for i in range(4)], "named": False},
                    )
                )
    return versions


def copy_records(versions, *, count: int, start: datetime, chunk: int = 500_000) -> float:
    """COPY `count` records spread evenly over 24 hours from `start`; returns seconds."""
    import numpy as np
    from django.db import connection

    rng = np.random.default_rng(1)
    version_ids = np.array([v.id for v in versions])
    model_ids = np.array([v.registered_model_id for v in versions])
    org_ids = np.array([v.registered_model.organization_id for v in versions])
    columns = (
        "prediction_id, created_at, organization_id, registered_model_id, version_id, experiment_id, variant, "
        "api_key_id, unit_id, "
        "protocol, rows, latency_ms, cache_hit, status, error_code, inputs, outputs"
    )
    started = time.perf_counter()
    base = start.timestamp()
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg 3 cursor underneath Django's wrapper
        for offset in range(0, count, chunk):
            n = min(chunk, count - offset)
            index = np.arange(offset, offset + n)
            pick = rng.integers(0, len(version_ids), size=n)
            seconds = base + index * (86_400 / count)
            latency = rng.gamma(2.0, 4.0, size=n)
            key = rng.integers(0, KEYS_PER_ORG + 1, size=n)  # 0: a person's JWT (no key)
            status = np.where(rng.random(n) < 0.01, 500, 200)
            hit = rng.random(n) < 0.3
            label = rng.integers(0, 3, size=n)
            variant = np.where(pick % 2 == 0, "", "v2")
            stamps = np.array(seconds * 1e6, dtype="datetime64[us]").astype(str).tolist()
            orgs, models, vids = org_ids[pick].tolist(), model_ids[pick].tolist(), version_ids[pick].tolist()
            keys = [str(k) if k else "\\N" for k in key.tolist()]
            hits = ["t" if h else "f" for h in hit.tolist()]
            variants, statuses, labels, latencies = variant.tolist(), status.tolist(), label.tolist(), latency.tolist()
            buffer = io.StringIO()
            for i in range(n):
                buffer.write(
                    f"prd_bench{offset + i:021d}\t{stamps[i]}+00\t{orgs[i]}\t{models[i]}\t{vids[i]}\t\\N\t"
                    f"{variants[i]}\t{keys[i]}\t\tnative\t1\t"
                    f"{latencies[i]:.3f}\t{hits[i]}\t{statuses[i]}\t\t[[5.1, 3.5, 1.4, 0.2]]\t[{labels[i]}]\n"
                )
            with raw.copy(f"COPY inference_predictionrecord ({columns}) FROM STDIN") as copy:
                copy.write(buffer.getvalue())
            print(f"  copied {offset + n:>11,} records", flush=True)
    return time.perf_counter() - started


def vacuum_records() -> float:
    """VACUUM ANALYZE, as autovacuum would have done by then; otherwise it runs during the measurement."""
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) inference_predictionrecord")
    return time.perf_counter() - started


def drift_version():
    """A real 20-feature classifier with a 10 000-row reference CSV (through the registry's storage)."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from accounts.models import Organization
    from accounts.principals import Caller
    from registry import artifacts, services
    from registry.tests.factories import create_version

    rng = np.random.default_rng(2)
    x = rng.normal(size=(10_000, N_FEATURES))
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)
    org = Organization.objects.create(slug="bench-drift", name="Bench drift")
    model = services.create_model(caller=Caller(), organization=org, name="wide")
    version = create_version(model, LogisticRegression(max_iter=300).fit(x, y))
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(N_FEATURES)])
    with tempfile.NamedTemporaryFile("w", suffix=".csv") as handle:
        frame.to_csv(handle, index=False)
        handle.flush()
        name = artifacts.store(Path(handle.name), f"orgs/{org.id}/models/{model.id}/versions/{version.number}/reference.csv")
    type(version).objects.filter(pk=version.pk).update(reference_data=name, reference_rows=len(frame))
    version.refresh_from_db()
    return version


def drift_records(version, *, rows: int, end: datetime) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(3)
    x = rng.normal(size=(rows, N_FEATURES))
    x[:, : N_FEATURES // 2] += 0.5  # half the features drift
    labels = rng.integers(0, 3, size=rows)
    model = version.registered_model
    start = end - timedelta(minutes=50)
    return [
        {
            "id": f"prd_drift{i:021d}",
            "ts": start.timestamp() + i * (3000 / rows),
            "org": model.organization_id,
            "model": model.id,
            "version": version.id,
            "proto": "native",
            "rows": 1,
            "lat": 1.0,
            "hit": False,
            "in": [x[i].tolist()],
            "out": [int(labels[i])],
        }
        for i in range(rows)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--drift-rows", type=int, default=100_000)
    parser.add_argument("--ingest-sample", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=2, help="hours rolled up at once in the second rollup run")
    parser.add_argument("--reuse", action="store_true", help="keep the records of the previous run; only measure again")
    args = parser.parse_args()

    if not args.reuse:
        recreate_database()
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db.models import Max, Min

    call_command("migrate", verbosity=0)

    from analytics.models import DriftReport, Granularity, RollupCursor, UsageRollup
    from analytics.services import drift, usage
    from inference.models import PredictionRecord
    from inference.records import ingest_records
    from registry.models import ModelVersion

    results: dict = {}
    now = datetime.now(UTC)
    if args.reuse:
        UsageRollup.objects.all().delete()
        RollupCursor.objects.all().delete()
        DriftReport.objects.all().delete()
        start = usage.day_floor(
            PredictionRecord.objects.filter(prediction_id__startswith="prd_bench").aggregate(t=Min("created_at"))["t"]
        )
        version = ModelVersion.objects.select_related("registered_model__organization").get(registered_model__name="wide")
        drift_end = PredictionRecord.objects.filter(version=version).aggregate(t=Max("created_at"))["t"] + timedelta(minutes=1)
        total = PredictionRecord.objects.count()
        print(f"reusing {total:,} records", flush=True)
    else:
        versions = make_fleet()
        start = usage.day_floor(now - timedelta(days=2))
        print(f"ingest_records on {args.ingest_sample:,} records (the worker's bulk insert)", flush=True)
        sample = [
            {
                "id": f"prd_sample{i:020d}",
                "ts": (start + timedelta(seconds=i % 86_400)).timestamp(),
                "org": versions[i % len(versions)].registered_model.organization_id,
                "model": versions[i % len(versions)].registered_model_id,
                "version": versions[i % len(versions)].id,
                "proto": "native",
                "rows": 1,
                "lat": 1.0 + i % 17,
                "hit": i % 3 == 0,
                "in": [[5.1, 3.5, 1.4, 0.2]],
                "out": [i % 3],
            }
            for i in range(args.ingest_sample)
        ]
        with measured("ingest_records", results):
            for offset in range(0, len(sample), 10_000):
                ingest_records(sample[offset : offset + 10_000])
        del sample
        print(f"COPY {args.records:,} records over 24 hours", flush=True)
        copy_seconds = copy_records(versions, count=args.records, start=start)
        version = drift_version()
        ingest_records(drift_records(version, rows=args.drift_rows, end=now))
        drift_end = now + timedelta(minutes=1)
        total = PredictionRecord.objects.count()
        print(
            f"  {total:,} records in the table ({copy_seconds:.1f} s to COPY, {vacuum_records():.1f} s to VACUUM ANALYZE)",
            flush=True,
        )

    print("roll_up_usage() from an empty cursor, one hour at a time", flush=True)
    with measured("rollup", results):
        run = usage.roll_up_usage(now=now)
    hourly = UsageRollup.objects.filter(granularity=Granularity.HOUR).count()
    daily = UsageRollup.objects.filter(granularity=Granularity.DAY).count()
    print(f"the same hours again with ANALYTICS_ROLLUP_CONCURRENCY={args.concurrency}", flush=True)
    settings.ANALYTICS_ROLLUP_CONCURRENCY = args.concurrency
    with measured("rollup_concurrent", results):
        again = usage.roll_up_range(start=start, end=start + timedelta(days=1))

    print(f"drift report: {args.drift_rows:,}-row window, {N_FEATURES} features, 10 000-row reference", flush=True)
    window = {"version": version, "window_start": drift_end - timedelta(hours=1), "window_end": drift_end, "trigger": "api"}
    with measured("drift_cold", results):  # the model is loaded into this worker's model cache on the way
        drift.run_drift_report(**window)
    with measured("drift", results):
        report = drift.run_drift_report(**window)

    rollup, concurrent, cold, warm = (results[k] for k in ("rollup", "rollup_concurrent", "drift_cold", "drift"))
    print()
    if "ingest_records" in results:
        ingest = results["ingest_records"]
        print(
            f"ingest_records : {args.ingest_sample:>11,} records in {ingest['seconds']:7.2f} s = "
            f"{args.ingest_sample / ingest['seconds']:>10,.0f} records/s"
        )
    print(
        f"rollup         : {total:>11,} records in {rollup['seconds']:7.2f} s = {total / rollup['seconds']:>10,.0f} records/s; "
        f"PostgreSQL used {rollup['db_cpu_seconds']:.1f} CPU s = {total / rollup['db_cpu_seconds']:,.0f} records per CPU "
        f"second, this process {rollup['cpu_seconds']:.1f} "
        f"(scan for touched hours {run.scan_seconds:.1f} s, {len(run.hours)} hours {run.hours_seconds:.1f} s, "
        f"{len(run.days)} day(s) {run.days_seconds:.1f} s; "
        f"{hourly:,} hourly and {daily:,} daily rows; peak RSS {rollup['peak_rss_mib']:.0f} MiB)"
    )
    print(
        f"rollup x{args.concurrency:<6}   : {total:>11,} records in {concurrent['seconds']:7.2f} s = "
        f"{total / concurrent['seconds']:>10,.0f} records/s "
        f"(hours {again.hours_seconds:.1f} s, day(s) {again.days_seconds:.1f} s)"
    )
    print(
        f"drift report   : {report.current_rows:>11,} rows x {report.n_features} features in {warm['seconds']:7.2f} s "
        f"wall, {warm['cpu_seconds']:.2f} s CPU here + {warm['db_cpu_seconds']:.2f} s in PostgreSQL "
        f"(first run, loading the model: {cold['seconds']:.2f} s; verdict: {'drift' if report.is_drift else 'no drift'}, "
        f"{report.drifted_features} of {report.n_features} drifted; peak RSS {warm['peak_rss_mib']:.0f} MiB)"
    )
    print(
        f"max RSS of this process: {max_rss_mib():.0f} MiB; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
        "targets: rollup >= 500,000 records/s, drift <= 2 s"
    )


if __name__ == "__main__":
    main()
