"""A batch chunk whose worker was SIGKILLed is sent again once its heartbeat stops, not an hour later.

Real Celery workers (platform_site/tests/workers.py) on Redis database 14 as broker, with
production's one-hour visibility timeout (batch_heartbeat_worker_settings.py): nothing but
the heartbeat rule can bring the killed worker's chunk back within the test.
"""

from __future__ import annotations

import time

import pytest
import redis
from django.utils import timezone

from inference.batch import services
from inference.models import BatchChunk, BatchJob
from inference.tests.test_batch_workers import big_csv, slow_forest, submit, wait_for  # noqa: F401 - slow_forest is a fixture
from platform_site.tests.workers import WorkerPool, publishing_to, worker_broker_url

BROKER = worker_broker_url("TEST_HEARTBEAT_BROKER_REDIS_DB", 14)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def pool(django_db_setup):
    redis.Redis.from_url(BROKER).flushdb()
    workers = WorkerPool(broker=BROKER, settings_module="inference.tests.batch_heartbeat_worker_settings")
    yield workers
    workers.stop()
    redis.Redis.from_url(BROKER).flushdb()


@pytest.mark.usefixtures("slow_forest")
def test_a_chunk_with_a_fresh_heartbeat_is_left_running(tenant_a, settings):
    # Runs before the module's workers start: nothing else scores this job's chunk.
    from inference.batch import heartbeat

    settings.BATCH_CHUNK_STALL_SECONDS = 60
    job_id = submit(tenant_a, big_csv(100))["id"]
    BatchJob.objects.filter(id=job_id).update(status="running", chunks_total=1, progressed_at=timezone.now())
    chunk = BatchChunk.objects.create(job_id=job_id, index=0, first_row=0, rows=100, attempts=1, started_at=timezone.now())
    heartbeat.beat_once(chunk_id=chunk.id)
    assert services.requeue_stalled_jobs() == 0
    BatchChunk.objects.filter(id=chunk.id).update(heartbeat_at=timezone.now() - timezone.timedelta(seconds=61))
    with publishing_to(BROKER):
        assert services.requeue_stalled_jobs() == 1
        assert services.requeue_stalled_jobs() == 0  # sent once, not at every run while it waits


@pytest.mark.usefixtures("slow_forest")
def test_a_killed_workers_chunk_is_sent_again_once_its_heartbeat_is_stale(tenant_a, pool, settings):
    settings.BATCH_CHUNK_ROWS = 8000  # about a second per chunk for this forest
    settings.BATCH_CHUNK_STALL_SECONDS = 3
    w1, w2 = pool.ensure("w1", "w2")
    with publishing_to(BROKER):
        job_id = submit(tenant_a, big_csv(64_000))["id"]

        def w1_just_started_a_chunk():
            recent = timezone.now() - timezone.timedelta(seconds=0.3)
            return BatchChunk.objects.filter(
                job_id=job_id, worker__startswith="w1@", is_done=False, started_at__gte=recent, job__chunks_done__gte=1
            ).first()

        in_flight = wait_for(w1_just_started_a_chunk, timeout=60, pool=pool)
        w1.kill()
        killed_at = time.monotonic()

        def finished_after_requeue():
            services.requeue_stalled_jobs()  # what beat runs every BATCH_REQUEUE_SECONDS
            return BatchJob.objects.filter(id=job_id).exclude(status__in=["queued", "running"]).first()

        job = wait_for(finished_after_requeue, timeout=60, pool=pool, interval=0.5)
    recovered_in = time.monotonic() - killed_at

    assert job.status == "succeeded", (job.error, pool.logs())
    assert recovered_in < 30
    redone = BatchChunk.objects.get(job_id=job_id, index=in_flight.index)
    assert redone.is_done and redone.attempts == 2 and redone.worker.startswith("w2@")
    # Chunks whose workers kept beating were never sent twice.
    assert (
        sorted(BatchChunk.objects.filter(job_id=job_id).exclude(index=in_flight.index).values_list("attempts", flat=True))
        == [1] * 7
    )
    assert job.rows_done == job.rows_total == 64_000
