"""A live platform for the client's tests: the real web server (granian) and a real worker.

The web process and the worker run against this session's test database (the tests commit
their data: transaction=True) and the suite's runner host (RUNNER_ADDRESSES); the worker and
the web process share the suite's Redis as broker. The `modelhost` command is the console
script installed from ./client, run as a child process as a user would run it.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from platform_site.tests.processes import free_port, wait_for_http, web_process_env
from platform_site.tests.workers import WorkerPool

ROOT = Path(__file__).resolve().parents[2]
# One worker for batch jobs, replays and drift reports.
WORKER, WORKER_QUEUES = "client-worker", "batch,analytics,default"
MODELHOST = Path(sys.executable).with_name("modelhost")
_slugs = itertools.count(1)


@dataclass
class LivePlatform:
    url: str
    workers: WorkerPool

    def ensure_worker(self) -> None:
        """Wait until the worker is ready (started again if it died)."""
        self.workers.ensure(WORKER, queues=WORKER_QUEUES)


@pytest.fixture(scope="session")
def live_platform(django_db_setup, tmp_path_factory):
    from django.conf import settings

    folder = tmp_path_factory.mktemp("platform")
    port = free_port()
    env = {**web_process_env(port=port, metrics_dir=folder / "prometheus", settings=settings), "WEB_CONCURRENCY": "1"}
    # The worker starts while the web server does; only the tests that need it wait for it.
    workers = WorkerPool(broker=settings.CELERY_BROKER_URL)
    workers.start(WORKER, queues=WORKER_QUEUES)
    log = folder / "web.log"
    with log.open("wb") as out:
        web = subprocess.Popen(
            [sys.executable, "-m", "platform_site.serve"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", web, timeout=90, log=lambda: log.read_text()[-3000:])
        yield LivePlatform(url=url, workers=workers)
    finally:
        web.terminate()  # both shut down at once; the worker before the test database is dropped
        workers.stop()
        web.wait(timeout=30)


@pytest.fixture
def tenant(db):
    """A fresh organization (a slug of its own, so nothing the web process cached from another test applies)."""
    from conftest import make_tenant

    return make_tenant(f"cli{os.getpid()}x{next(_slugs)}")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)

    def error_json(self):
        return json.loads(self.stderr)


@pytest.fixture
def run(tmp_path, live_platform):
    """Run `modelhost ARGS...` in a child process with its own config folder; answers its exit code and output."""
    config = tmp_path / "config"

    def run(*args: str, env: dict | None = None, input: str | None = None, cwd: Path | None = None) -> Result:
        base = {k: v for k, v in os.environ.items() if not k.startswith("MODELHOST_")}
        done = subprocess.run(
            [str(MODELHOST), *map(str, args)],
            env={**base, "MODELHOST_CONFIG_DIR": str(config), "COLUMNS": "200", **(env or {})},
            capture_output=True,
            text=True,
            input=input,
            cwd=cwd or tmp_path,
            timeout=120,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    run.config = config
    return run


@pytest.fixture
def logged_in(run, tenant, live_platform):
    """`modelhost login` done with the tenant's API key."""
    result = run("login", "--url", live_platform.url, "--api-key", tenant.api_key)
    assert result.code == 0, result.stderr
    return tenant
