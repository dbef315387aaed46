"""Upload-to-ready time: from the start of the upload to the first prediction it answers.

    .venv/bin/python bench/upload_bench.py

Starts the web process (the Procfile's: granian via platform_site/serve.py) against the machine's PostgreSQL
(database `modelhost_bench`) and Redis (db 13), then for each model: POST the file to
/versions (sandbox check included), promote it, and POST one prediction (cold load in
that worker). Prints each step and the total. Models: iris LogisticRegression and a
RandomForestClassifier with 500 trees on 20 features.
"""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modelhost_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(port: int, storage: str) -> dict:
    return {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "SECRET_KEY": "bench-secret-key-not-for-production-0123456789abcdefghijklmnop",
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "MODEL_STORAGE_ROOT": storage,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
        "DJANGO_SETTINGS_MODULE": "platform_site.settings",
    }


def prepare(env: dict) -> str:
    """Create the database if needed, migrate, and make an org with an unlimited key."""
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DATABASE_URL.rsplit("/", 1)[1]], capture_output=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    script = """
import secrets
from accounts import services
from accounts.models import Organization, User
from accounts.principals import Caller
user, _ = User.objects.get_or_create(email="bench@modelhost.local")
caller = Caller(user=user)
slug = "upload-bench-" + secrets.token_hex(3)
org = services.create_organization(caller=caller, name=slug, slug=slug)
Organization.objects.filter(id=org.id).update(rate_limit_per_minute=0)
_, key = services.create_api_key(caller=caller, organization=org, name="bench", scopes=["admin"])
print(slug, key)
"""
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def models() -> dict[str, tuple[bytes, list[float]]]:
    from sklearn.datasets import load_iris, make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    built = {}
    x, y = load_iris(return_X_y=True)
    buffer = io.BytesIO()
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), buffer)
    built["iris (LogisticRegression)"] = (buffer.getvalue(), x[0].tolist())
    x, y = make_classification(n_samples=5000, n_features=20, random_state=0)
    buffer = io.BytesIO()
    joblib.dump(RandomForestClassifier(n_estimators=500, random_state=0, n_jobs=2).fit(x, y), buffer)
    built["RandomForest (500 trees, 20 features)"] = (buffer.getvalue(), x[0].tolist())
    return built


def main() -> int:
    port = free_port()
    storage = tempfile.mkdtemp(prefix="mh-upload-bench-")
    env = environment(port, storage)
    slug, key = prepare(env).split()
    web = subprocess.Popen(
        [sys.executable, "-m", "platform_site.serve"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": key}
    try:
        for _ in range(300):
            try:
                if requests.get(f"{base}/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        print(f"{'model':40} {'size':>10} {'upload':>9} {'promote':>9} {'first predict':>14} {'total':>9}")
        for index, (label, (content, row)) in enumerate(models().items()):
            name = f"m{index}"
            requests.post(f"{base}/api/v1/models", json={"org": slug, "name": name}, headers=headers, timeout=10).raise_for_status()
            started = time.perf_counter()
            upload = requests.post(
                f"{base}/api/v1/models/{slug}/{name}/versions", files={"file": ("model.joblib", content)}, headers=headers, timeout=120
            )
            upload.raise_for_status()
            uploaded = time.perf_counter()
            requests.post(f"{base}/api/v1/models/{slug}/{name}/versions/1/stage", json={"stage": "production"}, headers=headers, timeout=60).raise_for_status()
            promoted = time.perf_counter()
            answer = requests.post(f"{base}/api/v1/models/{slug}/{name}/predict", json={"inputs": [row]}, headers=headers, timeout=60)
            answer.raise_for_status()
            done = time.perf_counter()
            assert isinstance(answer.json()["predictions"][0], (int, float)), answer.text
            print(
                f"{label:40} {len(content) / 1e6:>8.2f}MB {uploaded - started:>8.2f}s {promoted - uploaded:>8.2f}s"
                f" {done - promoted:>13.2f}s {done - started:>8.2f}s"
            )
    finally:
        web.terminate()
        web.wait(timeout=20)
    return 0


if __name__ == "__main__":
    np.random.seed(0)
    sys.exit(main())
