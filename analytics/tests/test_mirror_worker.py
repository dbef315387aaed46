"""A live mirror's report accumulating from real predictions, computed by a real Celery worker.

The predictions go through the hot path (the test client), their records through the real
stream and ingestion; the mirror's task runs in a separate `celery --app platform_site worker`
process on the `analytics` queue (platform_site/tests/workers.py) against this session's test
database and the suite's runner host, where the candidate raises on a third of the rows. The
test commits its data (transaction=True) so the worker sees it, and sends the task as beat
does. Nothing is faked.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neighbors import KNeighborsClassifier

from analytics import tasks
from analytics.tests.test_drift_worker import analytics_worker  # noqa: F401 (the worker fixture)
from analytics.tests.test_mirrors import PREDICT, URL, failing_candidate, serve_all
from inference import routing
from inference.models import Mirror
from registry.tests import factories as rf

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]
candidate_model = failing_candidate  # the fixture: v1 handles missing values, v2 raises on them


def wait_for_rows(client, rows: int, worker) -> dict:
    deadline = time.monotonic() + 60
    while (body := client.get(URL).json())["rows_mirrored"] < rows:
        assert time.monotonic() < deadline, worker.logs()
        time.sleep(0.3)
    return body


def test_the_worker_accumulates_the_report_from_real_predictions(tenant_a, candidate_model, analytics_worker):  # noqa: F811
    client = tenant_a.key_client()
    assert client.post(URL, {"version": 2, "fraction": 0.5}, format="json").status_code == 201
    Mirror.objects.update(fraction=1.0)  # every request, so that the figures below are exact
    routing.clear_routes()
    x, y = rf.iris_data()
    rows = [[None if i % 3 == 0 else float(x[i, 0]), *map(float, x[i, 1:])] for i in range(90)]

    answers = serve_all(client, rows[:45])
    tasks.mirror_predictions.delay()
    first = wait_for_rows(client, 45, analytics_worker)
    answers += serve_all(client, rows[45:])
    tasks.mirror_predictions.delay()
    body = wait_for_rows(client, 90, analytics_worker)

    production = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x, y)
    assert [a["predictions"][0] for a in answers] == production.predict(np.array(rows, dtype=np.float64)).tolist()
    answered = [i for i in range(90) if i % 3]
    old = production.predict(np.array(rows, dtype=np.float64))[answered]
    new = KNeighborsClassifier(n_neighbors=15).fit(x, y).predict(x[answered])
    assert (first["rows_mirrored"], first["rows_compared"], first["report"]["failures"]["candidate_only"]) == (45, 30, 15)
    assert (body["rows_mirrored"], body["rows_compared"], body["report"]["failures"]["candidate_only"]) == (90, 60, 30)
    assert body["agreement"] == pytest.approx(np.mean(old == new))
    assert body["report"]["latency"]["candidate_predict"]["records"] == 60
    output = analytics_worker.workers["analytics"].output()
    assert "Task analytics.mirror_predictions[" in output and "Task analytics.mirror_one[" in output
    assert client.post(PREDICT, {"inputs": [rows[0]]}, format="json").status_code == 200  # production still answers
