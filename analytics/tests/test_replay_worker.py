"""A replay asked for through the API and computed by a real Celery worker on the analytics queue.

The worker (platform_site/tests/workers.py) is a separate `celery --app platform_site worker`
process with the suite's Redis (database TEST_BROKER_REDIS_DB) as broker, DATABASE_URL pointing
at this session's test database and the suite's runner host for the candidate (a tree, served
in the organization's runner); the test commits its data (transaction=True) so the worker sees
it. Nothing is faked.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from analytics.tests import factories as af
from analytics.tests.test_drift_worker import analytics_worker  # noqa: F401 (the worker fixture)
from analytics.tests.test_replays import serve, stump, url
from registry.tests import factories as rf

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


def test_the_worker_replays_what_the_api_queued(tenant_a, analytics_worker):  # noqa: F811
    model, (production,) = af.iris_model(tenant_a)
    rf.create_version(model, stump())
    x, _ = rf.iris_data()
    serve(production, x, outputs=rf.iris_model().predict(x).tolist())
    client = tenant_a.key_client()

    queued = client.post(url(2), {"rows": 150}, format="json")

    assert queued.status_code == 202, queued.content
    deadline = time.monotonic() + 60
    while (replay := client.get(queued["Location"]).json())["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, analytics_worker.logs()
        time.sleep(0.2)
    assert (replay["status"], replay["error"]) == ("done", ""), analytics_worker.logs()
    assert (replay["rows_total"], replay["rows_done"], replay["rows_compared"]) == (150, 150, 150)
    assert replay["agreement"] == pytest.approx(np.mean(rf.iris_model().predict(x) == stump().predict(x)))
    assert replay["report"]["latency"]["candidate"]["total_ms"] > 0
    assert "analytics.compute_replay[" in analytics_worker.logs()
