"""/metrics aggregates every web worker (prometheus_client multiprocess mode), under the real server."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from platform_site.tests.processes import METRICS_HEADERS, free_port, wait_for_http, web_process_env
from registry.tests import factories as f

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_counters_add_up_across_two_web_processes(tenant_a, tmp_path, settings):
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, promote=True)
    port = free_port()
    env = web_process_env(port=port, metrics_dir=tmp_path / "prometheus", settings=settings)
    log = (tmp_path / "web.log").open("wb")
    web = subprocess.Popen(
        [sys.executable, "-m", "platform_site.serve"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", web, timeout=60)
        for i in range(40):
            # A fresh connection per request lets the kernel spread them over both workers.
            with requests.Session() as session:
                response = session.post(
                    f"{base}/api/v1/models/acme/iris/predict",
                    json={"inputs": [[5.0 + i / 100, 3.4, 1.5, 0.2]]},
                    headers={"X-API-Key": tenant_a.api_key, "Connection": "close"},
                    timeout=30,
                )
            assert response.status_code == 200, response.text
        text = requests.get(f"{base}/metrics", headers=METRICS_HEADERS, timeout=10).text
        line = next(s for s in text.splitlines() if s.startswith("modelhost_prediction_requests_total{") and 'model="iris"' in s)
        assert float(line.rsplit(" ", 1)[1]) == 40.0
        # Each worker writes its own file; the scrape above summed whichever served.
        assert len(list((tmp_path / "prometheus").glob("counter_*.db"))) >= 1

        # A worker that dies is replaced, and its live gauges stop counting.
        workers = [pid for pid in _live_gauge_pids(tmp_path / "prometheus") if _parent(pid) == web.pid]
        assert workers, "no worker wrote a live gauge"
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{base}/healthz", timeout=2)
                text = requests.get(f"{base}/metrics", headers=METRICS_HEADERS, timeout=5).text
            except requests.RequestException:
                time.sleep(0.2)
                continue
            if workers[0] not in _live_gauge_pids(tmp_path / "prometheus"):
                break
            time.sleep(0.2)
        assert workers[0] not in _live_gauge_pids(tmp_path / "prometheus")
        answered = requests.post(
            f"{base}/api/v1/models/acme/iris/predict",
            json={"inputs": [[5.0, 3.4, 1.5, 0.2]]},
            headers={"X-API-Key": tenant_a.api_key},
            timeout=30,
        )
        assert answered.status_code == 200
        total = next(
            line
            for line in requests.get(f"{base}/metrics", headers=METRICS_HEADERS, timeout=10).text.splitlines()
            if line.startswith("modelhost_prediction_requests_total{") and 'model="iris"' in line
        )
        assert float(total.rsplit(" ", 1)[1]) == 41.0  # counters keep what the dead worker counted
        # Let the replacement finish starting: a worker still importing ignores the stop signal.
        deadline = time.monotonic() + 30
        while (tmp_path / "web.log").read_text().count("Started worker") < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        web.terminate()
        web.wait(timeout=30)


def _live_gauge_pids(folder: Path) -> set[int]:
    return {int(m.group(1)) for path in folder.iterdir() if (m := re.fullmatch(r"gauge_live\w+_(\d+)\.db", path.name))}


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_cache_up_is_the_webs_alone_when_worker_and_beat_share_its_metrics_folder(tenant_a, tmp_path, settings):
    from accounts.principals import Caller
    from platform_site.tests.workers import WorkerPool
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, promote=True)
    folder = tmp_path / "prometheus"
    port = free_port()
    env = web_process_env(port=port, metrics_dir=folder, settings=settings)
    log = (tmp_path / "web.log").open("wb")
    web = subprocess.Popen([sys.executable, "-m", "platform_site.serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    # One host, as `make run` and a single machine's Procfile: the same folder for all three.
    pool = WorkerPool(broker=settings.REDIS_URL, env={"PROMETHEUS_MULTIPROC_DIR": str(folder)})
    try:
        wait_for_http(f"{base}/healthz", web, timeout=60)
        pool.start("ingest", queues="ingest")
        beat = pool.start_beat()
        pool.workers["ingest"].wait_ready()
        beat.wait_ready()
        answered = requests.post(
            f"{base}/api/v1/models/acme/iris/predict",
            json={"inputs": [[5.0, 3.4, 1.5, 0.2]]},
            headers={"X-API-Key": tenant_a.api_key},
            timeout=30,
        )
        assert answered.status_code == 200, answered.text
        text = requests.get(f"{base}/metrics", headers=METRICS_HEADERS, timeout=10).text
        assert "modelhost_cache_up 1.0" in text.splitlines(), [line for line in text.splitlines() if "cache_up" in line]
        writers = {pid for pid in _live_gauge_pids(folder)}
        assert writers and all(_parent(pid) == web.pid for pid in writers), pool.logs()
    finally:
        pool.stop()
        web.terminate()
        web.wait(timeout=30)
