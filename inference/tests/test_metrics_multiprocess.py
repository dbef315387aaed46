"""/metrics aggregates every gunicorn worker (prometheus_client multiprocess mode)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.db import connection

from platform_site.tests.processes import free_port, wait_for_http
from registry.tests import factories as f

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_counters_add_up_across_two_web_processes(tenant_a, tmp_path, settings):
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, promote=True)
    db = connection.settings_dict
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        "MODEL_STORAGE_ROOT": str(settings.STORAGES["models"]["OPTIONS"]["location"]),
        "WEB_CONCURRENCY": "2",
        "PORT": str(port),
        "HOST": "127.0.0.1",
    }
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "platform_site.wsgi", "--config", "platform_site/gunicorn_conf.py"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
        text = requests.get(f"{base}/metrics", timeout=10).text
        line = next(l for l in text.splitlines() if l.startswith("modelhost_prediction_requests_total{") and 'model="iris"' in l)
        assert float(line.rsplit(" ", 1)[1]) == 40.0
        # Each worker writes its own file; the scrape above summed whichever served.
        assert len(list((tmp_path / "prometheus").glob("counter_*.db"))) >= 1
    finally:
        web.terminate()
        web.wait(timeout=20)
