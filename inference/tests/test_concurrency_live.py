"""Many clients at once against the real web process (granian, 2 workers x 2 threads), which never
loads scikit-learn: tenants' models run in their organizations' runners."""

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import psutil
import pytest
import requests
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

from platform_site.tests.processes import METRICS_HEADERS, free_port, wait_for_http, web_process_env
from registry.tests import factories as f

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_predictions_are_right_and_each_recorded_once(tenant_a, tmp_path, settings):
    """16 clients, 400 distinct rows: every answer is the model's own, and the stream holds one
    record per answer (the last ones leave their worker's socket within ~200 ms)."""
    from accounts.principals import Caller
    from inference import records
    from platform_site.redis_client import get_redis
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, promote=True)
    forest_model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="forest")
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(*load_iris(return_X_y=True))
    f.create_version(forest_model, forest, promote=True)
    estimator = f.iris_model()
    port = free_port()
    env = web_process_env(port=port, metrics_dir=tmp_path / "prometheus", settings=settings)
    env.pop("WEB_THREADS", None)  # the default: two per worker
    log = (tmp_path / "web.log").open("wb")
    web = subprocess.Popen([sys.executable, "-m", "platform_site.serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(3)
    rows = (rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], size=(400, 4))).round(3).tolist()
    local = threading.local()  # one keep-alive connection per client thread

    def call(row):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(
            f"{base}/api/v1/models/acme/iris/predict",
            json={"inputs": [row], "parameters": {"probabilities": True}},
            headers={"X-API-Key": tenant_a.api_key},
            timeout=30,
        )
        return row, response.status_code, response.json()

    try:
        wait_for_http(f"{base}/healthz", web, timeout=60)
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(call, rows))
        assert [status for _, status, _ in answers] == [200] * len(rows), [body for _, status, body in answers if status != 200][
            :3
        ]
        got = [body["predictions"][0] for _, _, body in answers]
        assert got == estimator.predict(np.array(rows)).tolist()
        np.testing.assert_allclose(
            [body["probabilities"][0] for _, _, body in answers], estimator.predict_proba(np.array(rows)), rtol=0, atol=1e-12
        )
        ids = {body["id"] for _, _, body in answers}
        assert len(ids) == len(rows)

        deadline = time.monotonic() + 5
        while get_redis().xlen(records.STREAM) < len(rows) and time.monotonic() < deadline:
            time.sleep(0.05)
        stored = [orjson.loads(fields[b"r"]) for _, fields in get_redis().xrange(records.STREAM)]
        assert sorted(r["id"] for r in stored) == sorted(ids)
        by_id = {r["id"]: r for r in stored}
        for row, _, body in answers[:50]:
            assert by_id[body["id"]]["in"] == [row] and by_id[body["id"]]["out"] == body["predictions"]
        text = requests.get(f"{base}/metrics", headers=METRICS_HEADERS, timeout=10).text
        line = next(s for s in text.splitlines() if s.startswith("modelhost_prediction_requests_total{") and 'model="iris"' in s)
        assert float(line.rsplit(" ", 1)[1]) == len(rows)
        # Once a worker holds the key and the route, its event loop answers the linear model
        # itself (platform_site.on_loop); each request above was still counted once.
        on_loop = {
            s.split('outcome="', 1)[1].split('"', 1)[0]: float(s.rsplit(" ", 1)[1])
            for s in text.splitlines()
            if s.startswith("modelhost_web_on_loop_total{")
        }
        assert on_loop.get("answered", 0) >= len(rows) / 2, on_loop

        # A forest is predicted in the organization's runner; the web's processes never map
        # scikit-learn's code at all, whatever they answered.
        answer = requests.post(
            f"{base}/api/v1/models/acme/forest/predict",
            json={"inputs": rows[:5]},
            headers={"X-API-Key": tenant_a.api_key},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == forest.predict(np.array(rows[:5])).tolist()
        web_processes = [psutil.Process(web.pid), *psutil.Process(web.pid).children(recursive=True)]
        assert len(web_processes) >= 3  # the server process and its two workers
        for process in web_processes:
            mapped = {m.path for m in process.memory_maps()}
            assert not [path for path in mapped if "/sklearn/" in path], process.cmdline()
            assert [path for path in mapped if "/numpy/" in path], "the check reads the right maps"
    finally:
        web.terminate()
        web.wait(timeout=30)
