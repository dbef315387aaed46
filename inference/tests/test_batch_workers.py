"""Batch jobs on real Celery workers: separate processes, a real Redis broker, the test database.

The workers (platform_site/tests/workers.py) run `celery --app platform_site worker` with
inference/tests/batch_worker_settings.py (a 5 s broker visibility timeout), Redis database 11
as broker, and DATABASE_URL pointing at this session's test database; the tests commit their
data (transaction=True) so the workers see it. Nothing is faked.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd
import pytest
import redis
from django.utils import timezone
from sklearn.ensemble import RandomForestClassifier

from inference import webhooks
from inference.batch import storage
from inference.models import BatchChunk, BatchJob, PredictionRecord
from inference.tests.test_batch_webhooks import Receiver
from platform_site.tests.workers import WorkerPool, publishing_to, worker_broker_url
from registry.tests import factories as f

BROKER = worker_broker_url("TEST_BATCH_BROKER_REDIS_DB", 11)
FEATURES = f.IRIS_FEATURES

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def pool(django_db_setup):
    redis.Redis.from_url(BROKER).flushdb()
    workers = WorkerPool(broker=BROKER, settings_module="inference.tests.batch_worker_settings")
    yield workers
    workers.stop()  # before the test database is dropped: the workers hold connections to it
    redis.Redis.from_url(BROKER).flushdb()


@pytest.fixture
def slow_forest(tenant_a):
    """A 200-tree forest on noisy iris: deep trees make a chunk take a fraction of a second."""
    from accounts.principals import Caller
    from registry import services as registry_services

    x, y = f.iris_data()
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(x), 4000)
    frame = pd.DataFrame(x[picks] + rng.normal(scale=0.3, size=(4000, 4)), columns=FEATURES)
    forest = RandomForestClassifier(n_estimators=200, random_state=0).fit(frame, y[rng.integers(0, len(x), 4000)])
    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="forest")
    f.create_version(model, forest, promote=True)
    return forest


def big_csv(rows: int) -> bytes:
    x, _ = f.iris_data()
    rng = np.random.default_rng(1)
    data = np.round(x[rng.integers(0, len(x), rows)] + rng.normal(scale=0.3, size=(rows, 4)), 2)
    buffer = io.StringIO()
    pd.DataFrame(data, columns=FEATURES).to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def submit(tenant, content: bytes, **fields) -> int:
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = tenant.key_client().post(
        "/api/v1/models/acme/forest/batch-jobs", {"file": SimpleUploadedFile("rows.csv", content), **fields}, format="multipart"
    )
    assert response.status_code == 202, response.content
    return response.json()


def wait_for(condition, *, timeout: float, pool: WorkerPool, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out; jobs: {list(BatchJob.objects.values('id', 'status', 'chunks_done', 'chunks_total', 'error'))}\n{pool.logs()}"
    )


def test_a_worker_killed_mid_job_loses_and_doubles_no_row(tenant_a, slow_forest, pool, settings):
    settings.BATCH_CHUNK_ROWS = 8000  # about a second per chunk for this forest
    settings.BATCH_WEBHOOK_ALLOW_PRIVATE_HOSTS = True
    w1, w2 = pool.ensure("w1", "w2")
    receiver = Receiver([200])
    content = big_csv(96_000)
    try:
        with publishing_to(BROKER):
            created = submit(tenant_a, content, probabilities="true", webhook=receiver.url)
        job_id = created["id"]

        def w1_just_started_a_chunk():
            # Started less than 0.3 s ago: it is still being scored when the kill lands.
            recent = timezone.now() - timezone.timedelta(seconds=0.3)
            return BatchChunk.objects.filter(
                job_id=job_id, worker__startswith="w1@", is_done=False, started_at__gte=recent, job__chunks_done__gte=2
            ).first()

        in_flight = wait_for(w1_just_started_a_chunk, timeout=60, pool=pool)
        w1.kill()
        lost = list(BatchChunk.objects.filter(job_id=job_id, worker__startswith="w1@", is_done=False))
        assert [c.index for c in lost] == [in_flight.index], "the killed worker had exactly that chunk in hand"

        job = wait_for(
            lambda: BatchJob.objects.filter(id=job_id).exclude(status__in=["queued", "running"]).first(),
            timeout=60,
            pool=pool,
            interval=0.2,
        )
        assert job.status == "succeeded", (job.error, pool.logs())
        redone = BatchChunk.objects.get(job_id=job_id, index=in_flight.index)
        assert redone.is_done and redone.attempts == 2 and redone.worker.startswith("w2@")

        response = tenant_a.key_client().get(f"/api/v1/batch-jobs/{job_id}/result")
        result = pd.read_csv(io.BytesIO(b"".join(response.streaming_content)))
        source = pd.read_csv(io.BytesIO(content))
        assert len(result) == len(source) == 96_000 == job.rows_total == job.rows_done
        np.testing.assert_array_equal(result[FEATURES].to_numpy(), source.to_numpy())  # same rows, same order
        np.testing.assert_array_equal(result["prediction"].to_numpy(), slow_forest.predict(source))
        np.testing.assert_array_equal(
            result[[f"probability_{c}" for c in (0, 1, 2)]].to_numpy(), slow_forest.predict_proba(source)
        )
        records = PredictionRecord.objects.filter(prediction_id__startswith=f"batch_{job_id}_")
        assert records.count() == job.chunks_total == 12 and sum(r.rows for r in records) == 96_000

        wait_for(lambda: receiver.received, timeout=20, pool=pool)
        headers, body = receiver.received[0]
        assert webhooks.is_signed_by(body=body, secret=created["webhook_secret"], signature=headers["x-modelhost-signature"])
        assert b'"event":"batch_job.succeeded"' in body
        wait_for(lambda: not storage.exists(storage.part_name(job.storage_prefix, 0)), timeout=20, pool=pool, interval=0.2)
    finally:
        receiver.close()


def test_cancel_stops_real_workers_within_seconds(tenant_a, slow_forest, pool, settings):
    settings.BATCH_CHUNK_ROWS = 3000
    pool.ensure("w1", "w2")
    with publishing_to(BROKER):
        job_id = submit(tenant_a, big_csv(60_000), probabilities="true")["id"]
        wait_for(lambda: BatchJob.objects.filter(id=job_id, chunks_done__gte=2).exists(), timeout=60, pool=pool)
        response = tenant_a.key_client().post(f"/api/v1/batch-jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    cancelled_at = timezone.now()
    broker = redis.Redis.from_url(BROKER)
    # Queued chunks are dropped at once (each task reads the status first): the queue drains in seconds.
    wait_for(lambda: broker.llen("batch") == 0, timeout=5, pool=pool, interval=0.1)
    time.sleep(1.0)  # a chunk in flight at the cancel finishes its rows and writes nothing
    job = BatchJob.objects.get(id=job_id)
    assert job.status == "cancelled" and job.chunks_done < job.chunks_total == 20
    assert not BatchChunk.objects.filter(job_id=job_id, started_at__gt=cancelled_at).exists()
    done = job.chunks_done
    time.sleep(1.0)
    assert BatchJob.objects.get(id=job_id).chunks_done == done
    assert not storage.exists(storage.result_name(job.storage_prefix, "csv"))
