"""schemathesis over the platform's OpenAPI schema answers no 5xx, under `make run` and on PostgreSQL + Redis.

Each test seeds an organization with a real model and the resources the schema's paths name,
runs schemathesis (fixed seed, bounded cases per operation; fuzzing.py) with the organization's
API key and its owner's JWT in turn, then runs the deletions last, so the first run keeps its
credentials and resources. About two minutes of requests each, after the platform starts.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from platform_site.tests.fuzzing import ROOT, FuzzRun, Tenant, run_schemathesis, seed_targets
from platform_site.tests.make_run import running_make_run
from platform_site.tests.processes import free_port, wait_for_http, web_process_env

pytestmark = pytest.mark.slow

# Answers that show both credentials went deep: a JWT (only a person creates organizations),
# the API key or JWT on the seeded organization and model.
REACHED = [
    ("POST /api/v1/orgs", 201),
    ("GET /api/v1/me", 200),
    ("GET /api/v1/orgs/{org}/members", 200),
    ("GET /api/v1/models/{org}/{model}/versions/{number}", 200),
    ("GET /api/v1/experiments/{experiment_id}", 200),
]


def schema_operations(base_url: str) -> set[str]:
    schema = requests.get(f"{base_url}/api/schema/", params={"format": "json"}, timeout=30).json()
    methods = {"get", "put", "post", "patch", "delete"}
    return {f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item if method in methods}


def fuzz(tenant: Tenant, folder) -> tuple[FuzzRun, FuzzRun]:
    """The fuzz without deletions, then the deletions; both must have answered no 5xx."""
    parameters = seed_targets(tenant)
    main = run_schemathesis(tenant, parameters=parameters, folder=folder, name="main", arguments=["--exclude-method", "DELETE"])
    deletions = run_schemathesis(
        tenant, parameters=parameters, folder=folder, name="deletions", arguments=["--include-method", "DELETE"]
    )
    print(
        f"schemathesis: {len(main.operations)} + {len(deletions.operations)} operations, "
        f"{main.requests} + {deletions.requests} requests"
    )
    for run in (main, deletions):
        assert run.server_errors == [], "\n".join(run.server_errors[:20]) + "\n" + run.output[-6000:]
        assert run.returncode == 0, run.output[-6000:]
    operations = schema_operations(tenant.base_url)
    assert main.operations | deletions.operations == operations
    assert [reached for reached in REACHED if not main.answered(*reached)] == [], main.output[-3000:]
    return main, deletions


def test_fuzzing_make_run_answers_no_server_error(tmp_path):
    """The embedded defaults: SQLite in WAL, the embedded Redis, the Procfile's web, worker, beat and runner."""
    folder = tmp_path / "make-run"
    folder.mkdir()
    # Its own runner host, not the one the suite started (which reads the suite's storage).
    environment = {"RUNNER_ADDRESSES": f"unix:{folder / 'var' / 'run' / 'runner.sock'}"}
    with running_make_run(folder=folder, environment=environment) as platform:
        tokens = requests.post(
            f"{platform.base_url}/api/v1/auth/token",
            json={"email": "demo@modelhost.local", "password": "modelhost-demo-password"},
            timeout=30,
        )
        assert tokens.status_code == 200, tokens.text
        jwt = tokens.json()["access"]
        tenant = Tenant(base_url=platform.base_url, org="demo", model="iris", api_key=platform.api_key, jwt=jwt)
        fuzz(tenant, tmp_path / "schemathesis")
        assert "Traceback" not in platform.log().split("Starting web", 1)[1], platform.log()[-6000:]


@pytest.mark.django_db(transaction=True)
def test_fuzzing_postgresql_and_redis_answers_no_server_error(tenant_a, tmp_path, settings):
    """The production services: the granian web server on the test's PostgreSQL database and Redis."""
    from accounts.principals import Caller
    from registry import services
    from registry.tests import factories as f

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, f.iris_frame_model(), promote=True)
    port = free_port()
    env = web_process_env(port=port, metrics_dir=tmp_path / "prometheus", settings=settings)
    with open(tmp_path / "web.log", "wb") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "platform_site.serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base_url}/healthz", web, timeout=120, log=lambda: (tmp_path / "web.log").read_text())
        tenant = Tenant(base_url=base_url, org="acme", model="iris", api_key=tenant_a.api_key, jwt=tenant_a.jwt)
        fuzz(tenant, tmp_path / "schemathesis")
        assert "Traceback" not in (tmp_path / "web.log").read_text(), (tmp_path / "web.log").read_text()[-6000:]
    finally:
        web.terminate()
        web.wait(timeout=30)
