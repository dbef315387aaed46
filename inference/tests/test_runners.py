"""Runners: tenants' models run in their organization's confined process, never in the web's.

Every test here talks to the suite's real runner host (conftest.py `_runner_host`) and the
real runner processes it forks; crashes are real signals sent to those processes.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time

import numpy as np
import pytest
from django.conf import settings
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestClassifier

from accounts.principals import Caller
from inference.runners import client as runners
from inference.runners import wire
from registry import services
from registry.tests import factories as f

pytestmark = pytest.mark.django_db


def forest(trees: int = 30) -> RandomForestClassifier:
    x, y = f.iris_data()
    return RandomForestClassifier(n_estimators=trees, random_state=0).fit(x, y)


def deploy(tenant, name: str, estimator):
    model = services.create_model(caller=Caller(user=tenant.user), organization=tenant.organization, name=name)
    f.create_version(model, estimator, promote=True)
    return model


def predict(client, tenant, name: str, rows):
    return client.post(f"/api/v1/models/{tenant.organization.slug}/{name}/predict", {"inputs": rows}, format="json")


def host_status() -> dict:
    return runners.ask_host(settings.RUNNER_ADDRESSES[0], {"op": "status"})


def runner_pids(org_id: int) -> list[int]:
    return [r["pid"] for r in host_status()["runners"] if r["org"] == org_id]


def estimator_ids() -> set[int]:
    return {id(o) for o in gc.get_objects() if isinstance(o, BaseEstimator)}


def test_a_forest_is_predicted_in_its_organizations_runner_and_no_estimator_is_loaded_here(tenant_a):
    estimator = forest()
    deploy(tenant_a, "forest", estimator)
    rows = f.iris_data()[0][::10].tolist()
    before = estimator_ids()
    response = predict(tenant_a.key_client(), tenant_a, "forest", rows)
    assert response.status_code == 200, response.content
    assert response.json()["predictions"] == estimator.predict(np.array(rows)).tolist()
    assert estimator_ids() - before == set()  # the web process built no estimator
    assert len(runner_pids(tenant_a.organization.id)) == 1


def test_a_runner_holds_no_secrets_and_runs_confined(tenant_a):
    deploy(tenant_a, "forest", forest())
    assert predict(tenant_a.key_client(), tenant_a, "forest", [f.IRIS_ROW]).status_code == 200
    (pid,) = runner_pids(tenant_a.organization.id)
    environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert names.isdisjoint(
        {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "API_KEY_PEPPER", "AWS_SECRET_ACCESS_KEY", "METRICS_TOKEN"}
    )
    assert os.environ["SECRET_KEY"].encode() not in b"\0".join(environ)
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    assert status["NoNewPrivs"].strip() == "1"
    if os.uname().machine == "x86_64":
        assert status["Seccomp"].strip() == "2"  # a filter: no sockets, exec, ptrace, namespaces
    if os.geteuid() == 0:  # started by root: a user and a network namespace of its own
        uid = int(status["Uid"].split()[0])
        assert uid == 200_000 + tenant_a.organization.id
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")


def test_a_runner_crashing_in_a_loop_hurts_only_its_organization(tenant_a, tenant_b):
    deploy(tenant_a, "forest", forest())
    estimator_b = forest(trees=20)
    deploy(tenant_b, "forest", estimator_b)
    rows = f.iris_data()[0][::15].tolist()
    expected_b = estimator_b.predict(np.array(rows)).tolist()
    client_a, client_b = tenant_a.key_client(), tenant_b.key_client()
    assert predict(client_a, tenant_a, "forest", rows).status_code == 200
    stop = threading.Event()
    kills = []

    def crash_a_again_and_again() -> None:
        while not stop.is_set():
            for pid in runner_pids(tenant_a.organization.id):
                try:
                    os.kill(pid, signal.SIGSEGV)
                    kills.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    killer = threading.Thread(target=crash_a_again_and_again, daemon=True)
    killer.start()
    answers_a, answers_b = [], []
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            fresh = [[rows[0][0] + len(answers_a) / 1000, *rows[0][1:]]]  # a new input: no cache hit
            response = predict(client_a, tenant_a, "forest", fresh)
            answers_a.append((response.status_code, response.json().get("code"), response.headers.get("Retry-After")))
            response = predict(client_b, tenant_b, "forest", rows)
            answers_b.append(
                (response.status_code, response.json()["predictions"] if response.status_code == 200 else response.content)
            )
    finally:
        stop.set()
        killer.join()
    assert kills, "the loop never found A's runner to crash"
    assert answers_b and all(answer == (200, expected_b) for answer in answers_b)
    refused = [a for a in answers_a if a[0] != 200]
    assert refused, "no request of A met a crashed runner"
    assert all(code == 503 and problem == "runner_unavailable" and retry.isdigit() for code, problem, retry in refused)
    assert host_status()["crashed_runners"] >= 1
    # A comes back once its backoff (RUNNER_BACKOFF_MAX_SECONDS in the suite) is over.
    deadline = time.monotonic() + 15
    while (response := predict(client_a, tenant_a, "forest", rows)).status_code != 200:
        assert time.monotonic() < deadline, response.content
        time.sleep(0.5)


def test_a_request_past_the_timeout_restarts_only_that_runner(tenant_a, settings):
    deploy(tenant_a, "big", forest(trees=200))
    rows = np.tile(f.iris_data()[0], (66, 1)).tolist()  # 9 900 rows through 200 trees: far past 1 ms
    client = tenant_a.key_client()
    assert predict(client, tenant_a, "big", [f.IRIS_ROW]).status_code == 200
    (first,) = runner_pids(tenant_a.organization.id)
    settings.RUNNER_REQUEST_TIMEOUT_SECONDS = 0.001
    response = predict(client, tenant_a, "big", rows)
    assert response.status_code == 503
    assert response.json()["code"] == "runner_unavailable"
    assert "longer than" in response.json()["detail"]
    settings.RUNNER_REQUEST_TIMEOUT_SECONDS = 60
    deadline = time.monotonic() + 10
    while (response := predict(client, tenant_a, "big", [f.IRIS_ROW])).status_code != 200:
        assert time.monotonic() < deadline, response.content
        time.sleep(0.2)
    assert first not in runner_pids(tenant_a.organization.id)


def test_a_version_that_keeps_stopping_its_runner_is_marked_failing(tenant_a, settings):
    settings.RUNNER_FAILING_AFTER_CRASHES = 2
    model = deploy(tenant_a, "big", forest(trees=20))
    client = tenant_a.key_client()
    attempts = 0

    def fresh() -> list[list[float]]:
        nonlocal attempts
        attempts += 1
        return [[f.IRIS_ROW[0] + attempts / 1000, *f.IRIS_ROW[1:]]]  # never a cache hit: the runner answers

    for _ in range(2):
        deadline = time.monotonic() + 30
        while predict(client, tenant_a, "big", fresh()).status_code != 200:  # waiting out the backoff
            assert time.monotonic() < deadline
            time.sleep(0.5)
        (pid,) = runner_pids(tenant_a.organization.id)
        os.kill(pid, signal.SIGSTOP)  # it takes the next request and never answers it...
        killer = threading.Timer(2.0, os.kill, (pid, signal.SIGKILL))  # ...then dies with it
        killer.start()
        response = predict(client, tenant_a, "big", fresh())
        killer.join()
        assert response.status_code == 503 and response.json()["code"] == "runner_unavailable", response.content
    version = model.versions.get()
    version.refresh_from_db()
    assert version.runner_crashes >= 2 and version.is_failing
    detail = client.get(f"/api/v1/models/{tenant_a.organization.slug}/big/versions/1").json()
    assert detail["serving"]["path"] == "runner" and detail["serving"]["failing"] is True
    from django.test import Client

    page = Client()
    page.force_login(tenant_a.user)
    assert b"failing: stopped its runner" in page.get(f"/models/{tenant_a.organization.slug}/big/").content


def test_the_host_refuses_a_hello_without_an_organization():
    assert runners.ask_host(settings.RUNNER_ADDRESSES[0], {"org": "acme"}) == {
        "ok": False,
        "reason": "a hello names an organization id",
    }


@pytest.mark.parametrize("dtype", ["O", "V8", "M8[s]"], ids=["object", "void", "datetime"])
def test_an_answer_is_decoded_only_from_numeric_bytes(dtype):
    buffers = [memoryview(b"\0" * 8)]
    with pytest.raises(wire.WireError):
        wire.decode_array({"dtype": np.dtype(dtype).str, "shape": [1], "buffer": 0}, buffers)


def test_an_answer_whose_bytes_do_not_match_its_shape_is_refused():
    with pytest.raises(wire.WireError, match="do not match"):
        wire.decode_array({"dtype": "<f8", "shape": [1000], "buffer": 0}, [memoryview(b"\0" * 8)])


def test_a_list_of_probability_arrays_crosses_the_wire_as_a_list():
    """A multi-output classifier's predict_proba is one array per output, of different widths."""
    buffers: list[bytes] = []
    entry = wire.encode_array([np.zeros((2, 3)), np.ones((2, 2))], buffers)
    decoded = wire.decode_array(entry, [memoryview(b) for b in buffers])
    assert isinstance(decoded, list) and [a.shape for a in decoded] == [(2, 3), (2, 2)]
    assert decoded[1].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def scraped(client, settings) -> dict[str, float]:
    settings.METRICS_TOKEN = "metrics-token-of-this-test"
    text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-of-this-test").content.decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelhost_runner") or line.startswith("modelhost_models_loaded")
    }


def test_metrics_report_each_runner_host_its_runners_and_the_models_they_hold(tenant_a, client, settings):
    deploy(tenant_a, "forest", forest())
    assert predict(tenant_a.key_client(), tenant_a, "forest", [f.IRIS_ROW]).status_code == 200
    host = f'{{host="{settings.RUNNER_ADDRESSES[0]}"}}'
    deadline = time.monotonic() + 10
    while True:  # a runner reports what it holds about once a second
        samples = scraped(client, settings)
        if samples.get(f"modelhost_models_loaded{host}", 0) >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert samples[f"modelhost_runner_host_up{host}"] == 1
    assert samples[f"modelhost_models_loaded{host}"] >= 1
    assert samples[f"modelhost_runners{host}"] >= 1
    assert samples[f"modelhost_runner_organizations{host}"] >= 1
    assert samples[f"modelhost_runner_memory_bytes{host}"] > 10 * 1024 * 1024
    assert samples[f"modelhost_runners_started_total{host}"] >= samples[f"modelhost_runners{host}"]
    assert f"modelhost_runners_crashed_total{host}" in samples


def test_a_runner_host_that_does_not_answer_is_down_in_the_metrics_and_reports_nothing_else(client, settings, tmp_path):
    missing = f"unix:{tmp_path}/no-host.sock"
    settings.RUNNER_ADDRESSES = [*settings.RUNNER_ADDRESSES, missing]
    samples = scraped(client, settings)
    assert samples[f'modelhost_runner_host_up{{host="{missing}"}}'] == 0
    assert samples[f'modelhost_runner_host_up{{host="{settings.RUNNER_ADDRESSES[0]}"}}'] == 1
    assert not [name for name in samples if missing in name and not name.startswith("modelhost_runner_host_up")]


def test_a_promotion_warms_every_runner_of_the_organization(tenant_a, settings, django_capture_on_commit_callbacks):
    import tempfile

    from platform_site.tests.processes import start_runner_host

    with tempfile.TemporaryDirectory(prefix="mh-warm-") as folder:
        address = f"unix:{folder}/runner.sock"
        with start_runner_host(socket_path=address[len("unix:") :], extra_env={"RUNNER_PROCESSES_PER_ORG": "2"}):
            settings.RUNNER_ADDRESSES = [address]
            settings.RUNNER_PROCESSES_PER_ORG = 2
            with django_capture_on_commit_callbacks(execute=True):
                deploy(tenant_a, "forest", forest())  # promoted: warmed on commit
            deadline = time.monotonic() + 10
            while True:  # each runner reports what it holds about once a second
                held = [
                    r["models"]
                    for r in runners.ask_host(address, {"op": "status"})["runners"]
                    if r["org"] == tenant_a.organization.id
                ]
                if held == [1, 1] or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert held == [1, 1]
            runners.close_all()
