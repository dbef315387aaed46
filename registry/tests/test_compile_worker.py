"""The compile after an upload, on a real Celery worker: a separate `celery --app platform_site
worker` process on the `default` queue (where registry.compile_version is routed), with the
suite's Redis (database TEST_BROKER_REDIS_DB) as broker and DATABASE_URL pointing at this
session's test database; the tests commit their data (transaction=True) so the worker sees it.
The worker uses the suite's runner host for the sandbox and to warm runners. Nothing is faked.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sklearn.ensemble import RandomForestClassifier

from platform_site.tests.workers import WorkerPool, one_worker
from registry.models import COMPILE_PENDING_REASON, ModelVersion
from registry.tests import factories as f
from registry.tests.test_api_registry import create_model, upload

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


@pytest.fixture
def compile_worker(django_db_setup):
    with one_worker("compile", queues="default") as pool:
        yield pool


def served_by(runtime: str) -> float:
    return REGISTRY.get_sample_value("modelhost_runner_predictions_total", {"runtime": runtime}) or 0.0


def runners_of(org_id: int) -> list[int]:
    from django.conf import settings

    from inference.runners import client as runners

    status = runners.ask_host(settings.RUNNER_ADDRESSES[0], {"op": "status"})
    return [runner["pid"] for runner in status["runners"] if runner["org"] == org_id]


def wait_compiled(client, path: str, *, pool: WorkerPool) -> dict:
    deadline = time.monotonic() + 90
    while (body := client.get(path).json())["compiled"]["status"] == "compiling":
        assert time.monotonic() < deadline, pool.logs()
        time.sleep(0.1)
    return body


def test_the_worker_compiles_after_the_upload_and_the_runner_switches_without_a_restart(tenant_a, compile_worker):
    x, y = f.iris_data()
    forest = RandomForestClassifier(n_estimators=30, random_state=0).fit(x, y)
    owner = tenant_a.jwt_client()
    assert create_model(owner).status_code == 201
    assert create_model(owner, name="kept").status_code == 201
    # Turned off at upload: queued nothing (the worker takes tasks in order, one at a time).
    kept = upload(owner, f.joblib_bytes(forest), model="kept", compiled="false")
    assert kept.status_code == 201 and kept.json()["compiled"]["status"] == "off"

    started = time.monotonic()
    response = upload(owner, f.joblib_bytes(forest))
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["runtime"], body["runtime_reason"]) == ("sklearn", COMPILE_PENDING_REASON)
    assert owner.post("/api/v1/models/acme/iris/versions/1/stage", {"stage": "production"}, format="json").status_code == 200
    client = tenant_a.key_client()
    rows = (x[::9] + 0.05).tolist()
    before = served_by("sklearn") + served_by("onnx")
    first = client.post("/api/v1/models/acme/iris/predict", {"inputs": rows[:2]}, format="json")
    assert first.status_code == 200 and first.json()["predictions"] == forest.predict(np.array(rows[:2])).tolist()
    assert served_by("sklearn") + served_by("onnx") == before + 1  # by the runner: sklearn, or onnx if the worker was quicker
    runner_pids = runners_of(tenant_a.organization.id)
    assert len(runner_pids) == 1

    body = wait_compiled(owner, "/api/v1/models/acme/iris/versions/1", pool=compile_worker)
    compiled_after = time.monotonic() - started
    assert (body["runtime"], body["compiled"]["status"]) == ("onnx", "verified"), (body["runtime_reason"], compile_worker.logs())
    assert body["compiled"]["check"]["passed"] is True and body["compiled"]["check"]["max_abs_diff"] == 0.0
    before = served_by("onnx")
    answer = client.post(
        "/api/v1/models/acme/iris/predict", {"inputs": rows, "parameters": {"probabilities": True}}, format="json"
    )
    assert answer.status_code == 200, answer.content
    assert served_by("onnx") == before + 1, "the route and the runner moved to the compiled form"
    assert answer.json()["predictions"] == forest.predict(np.array(rows)).tolist()
    assert answer.json()["probabilities"] == forest.predict_proba(np.array(rows)).tolist()
    assert runners_of(tenant_a.organization.id) == runner_pids, "the same runner process serves the compiled form"

    logs = compile_worker.logs()
    assert logs.count("registry.compile_version[") >= 1 and " succeeded in " in logs, logs
    received = [line for line in logs.splitlines() if "Task registry.compile_version[" in line and "received" in line]
    assert len(received) == 1, logs  # the version turned off at upload was never queued
    assert "could not warm version" not in logs, logs  # the production version was loaded compiled at once
    assert ModelVersion.objects.get(registered_model__name="kept").compiled_artifact == ""
    print(f"compiled and verified {compiled_after:.2f} s after the upload started")


def test_beats_sweep_queues_again_a_compile_lost_long_ago_and_leaves_a_recent_one(tenant_a, compile_worker):
    from datetime import timedelta

    from django.utils import timezone

    from registry import services

    x, y = f.iris_data()
    forest = RandomForestClassifier(n_estimators=20, random_state=1).fit(x, y)
    owner = tenant_a.jwt_client()
    for name in ("iris", "recent"):
        assert create_model(owner, name=name).status_code == 201
        assert upload(owner, f.joblib_bytes(forest), model=name).status_code == 201
    for name in ("iris", "recent"):
        wait_compiled(owner, f"/api/v1/models/acme/{name}/versions/1", pool=compile_worker)
    # As if the broker had been down at both uploads: each version still waiting for its compile,
    # one uploaded twenty minutes ago, the other just now.
    pending = {"compiled_sha256": "", "compiled_artifact": "", "compiled_reason": COMPILE_PENDING_REASON}
    ModelVersion.objects.filter(registered_model__name="iris").update(
        **pending, created_at=timezone.now() - timedelta(minutes=20)
    )
    ModelVersion.objects.filter(registered_model__name="recent").update(**pending)

    assert services.requeue_pending_compiles() == 1

    body = wait_compiled(owner, "/api/v1/models/acme/iris/versions/1", pool=compile_worker)
    assert (body["runtime"], body["compiled"]["status"]) == ("onnx", "verified"), compile_worker.logs()
    recent = owner.get("/api/v1/models/acme/recent/versions/1").json()
    assert recent["compiled"]["status"] == "compiling"  # younger than COMPILE_REQUEUE_AFTER_SECONDS: left to its own task
