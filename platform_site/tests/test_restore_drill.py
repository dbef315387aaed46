"""The restore drill: back up a platform, restore it into a fresh database and storage, and
find every model answering the same predictions, every user able to log in, every key working.

Real processes throughout: pg_dump and pg_restore, and the restored platform served by
`python -m platform_site.serve` against the new database and storage folder.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.core.management import call_command
from sklearn.linear_model import LogisticRegression

from accounts.principals import Caller
from platform_site.redis_client import get_redis
from platform_site.tests.processes import free_port, wait_for_http, web_process_env
from registry.tests import factories as f

ROOT = Path(__file__).resolve().parents[2]
ROWS = [f.IRIS_ROW, [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
PASSWORD = "restore-drill-password-1"

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


@pytest.fixture
def fresh_database():
    from django.db import connection

    name = f"{connection.settings_dict['NAME']}_restored"
    options = ["--host", connection.settings_dict["HOST"] or "127.0.0.1", "--username", connection.settings_dict["USER"]]
    subprocess.run(["dropdb", "--if-exists", *options, name], check=True)
    subprocess.run(["createdb", *options, name], check=True)
    db = connection.settings_dict
    yield name, f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}"
    subprocess.run(["dropdb", "--if-exists", "--force", *options, name], check=True)


def test_a_restored_platform_answers_as_the_original(tenant_a, tenant_b, settings, tmp_path, fresh_database):
    from accounts import services as accounts_services
    from registry import services as registry_services

    # The platform under test keeps its models in a folder of its own (the suite's is shared).
    settings.STORAGES = {
        **settings.STORAGES,
        "models": {**settings.STORAGES["models"], "OPTIONS": {"location": str(tmp_path / "models")}},
    }
    # Users log in with the production hasher in the restored web process.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    for tenant in (tenant_a, tenant_b):
        tenant.user.set_password(PASSWORD)
        tenant.user.save()
    iris = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(iris, promote=True)
    linear = registry_services.create_model(caller=Caller(user=tenant_b.user), organization=tenant_b.organization, name="linear")
    f.create_version(linear, LogisticRegression(max_iter=500).fit(*f.iris_data()), promote=True)
    _, predict_only = accounts_services.create_api_key(
        caller=Caller(user=tenant_b.user), organization=tenant_b.organization, name="predict only", scopes=["predict"]
    )
    revoked, revoked_plaintext = accounts_services.create_api_key(
        caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="old", scopes=["predict"]
    )
    accounts_services.revoke_api_key(caller=Caller(user=tenant_a.user), key=revoked)
    endpoints = {("acme", "iris"): [tenant_a.api_key], ("globex", "linear"): [tenant_b.api_key, predict_only]}
    before = {}
    for (org, model), keys in endpoints.items():
        response = tenant_a.key_client(keys[0]).post(
            f"/api/v1/models/{org}/{model}/predict", {"inputs": ROWS, "parameters": {"probabilities": True}}, format="json"
        )
        assert response.status_code == 200, response.content
        before[(org, model)] = (response.json()["predictions"], response.json()["probabilities"])

    backup = tmp_path / "backup"
    started = time.monotonic()
    call_command("backup_platform", to=str(backup))
    backup_seconds = time.monotonic() - started
    name, url = fresh_database
    restored_storage = tmp_path / "restored-models"
    started = time.monotonic()
    call_command("restore_platform", source=str(backup), database_url=url, storage_root=str(restored_storage))
    restore_seconds = time.monotonic() - started

    get_redis().flushdb()  # Redis is not backed up: the restored platform starts with it empty
    port = free_port()
    env = web_process_env(port=port, metrics_dir=tmp_path / "prometheus", settings=settings)
    env.update({"DATABASE_URL": url, "MODEL_STORAGE_ROOT": str(restored_storage)})
    log = tmp_path / "web.log"
    web = subprocess.Popen(
        [sys.executable, "-m", "platform_site.serve"], cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", web, timeout=60, log=log.read_text)
        for (org, model), keys in endpoints.items():
            for n, key in enumerate(keys):
                response = requests.post(
                    f"{base}/api/v1/models/{org}/{model}/predict",
                    json={"inputs": ROWS, "parameters": {"probabilities": True}},
                    headers={"X-API-Key": key},
                    timeout=30,
                )
                assert response.status_code == 200, response.text
                assert (response.json()["predictions"], response.json()["probabilities"]) == before[(org, model)]
                if n == 0:
                    assert response.json()["cache_hit"] is False  # answered by the restored model, not a cache
        for tenant in (tenant_a, tenant_b):
            token = requests.post(
                f"{base}/api/v1/auth/token", json={"email": tenant.user.email, "password": PASSWORD}, timeout=30
            )
            assert token.status_code == 200, token.text
            me = requests.get(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {token.json()['access']}"}, timeout=30)
            assert me.status_code == 200 and me.json()["user"]["email"] == tenant.user.email
        refused = requests.post(
            f"{base}/api/v1/models/acme/iris/predict", json={"inputs": ROWS}, headers={"X-API-Key": revoked_plaintext}, timeout=30
        )
        assert refused.status_code == 401  # a revoked key stays revoked
    finally:
        web.terminate()
        web.wait(timeout=30)
    # The drill's figures: a restore of this size takes seconds; see docs/operations.md for RTO/RPO.
    print(f"restore drill: backup {backup_seconds:.1f} s, restore {restore_seconds:.1f} s")
    assert restore_seconds < 300
