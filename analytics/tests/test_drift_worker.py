"""A drift report asked for through the API and computed by a real Celery worker.

The worker (platform_site/tests/workers.py) is a separate `celery --app platform_site worker`
process on the `analytics` queue, with the suite's Redis (database TEST_BROKER_REDIS_DB) as
broker and DATABASE_URL pointing at this session's test database; the test commits its data
(transaction=True) so the worker sees it. Nothing is faked.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from analytics.models import DriftReport
from analytics.tests import factories as af
from analytics.tests.test_drift_reports import URL, serve, store_reference
from platform_site.tests.workers import one_worker
from registry.tests import factories as rf

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


@pytest.fixture
def analytics_worker(django_db_setup):
    with one_worker("analytics", queues="analytics") as pool:
        yield pool


def test_the_worker_computes_a_report_the_api_queued(tenant_a, analytics_worker):
    _, (version,) = af.iris_model(tenant_a)
    x, _ = rf.iris_data()
    store_reference(version, pd.DataFrame(x, columns=["f0", "f1", "f2", "f3"]))
    serve(version, x[:100] + np.array([1.5, 0.8, 2.0, 0.9]), outputs=[2] * 100)
    client = tenant_a.key_client()

    queued = client.post(URL, {"window_hours": 2}, format="json")

    assert queued.status_code == 202, queued.content
    report_id = queued.json()["id"]
    deadline = time.monotonic() + 60
    while (report := client.get(f"/api/v1/drift-reports/{report_id}").json())["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, analytics_worker.logs()
        time.sleep(0.2)
    assert (report["status"], report["error"]) == ("done", ""), analytics_worker.logs()
    assert (report["is_drift"], report["drifted_features"], report["current_rows"], report["reference_rows"]) == (
        True,
        4,
        100,
        150,
    )
    assert report["started_at"] and report["finished_at"] >= report["started_at"]
    assert "analytics.compute_drift_report[" in analytics_worker.logs()
    stored = DriftReport.objects.get(id=report_id)
    assert stored.alerted_at is not None  # the worker raised the alert too
