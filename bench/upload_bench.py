"""Upload-to-ready time: from the start of the upload to the first prediction it answers.

    .venv/bin/python bench/upload_bench.py

Starts the runner host and the web process (the Procfile's `runner` and `web`) against the
machine's PostgreSQL (database `modelhost_bench`) and Redis (db 13), both with a VAR_DIR of
their own so the web finds this runner host at its default addresses, then for each model:
POST the file to /versions (sandbox check included), promote it, and POST one prediction (a
runner started and the model loaded into it, or the web's linear fast path). Prints each
step and the total, BENCH_REPEAT times per model (3; each a new model of the same
organization), then the median total. Models: iris LogisticRegression and a
RandomForestClassifier with 500 trees on 20 features.
"""

from __future__ import annotations

import io
import os
import socket
import statistics
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
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(port: int, storage: str, var_dir: str) -> dict:
    return {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "SECRET_KEY": "bench-secret-key-not-for-production-0123456789abcdefghijklmnop",
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "MODEL_STORAGE_ROOT": storage,
        "VAR_DIR": var_dir,
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
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
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
    var_dir = tempfile.mkdtemp(prefix="mh-upload-bench-var-")
    env = environment(port, storage, var_dir)
    slug, key = prepare(env).split()
    host = start_runner_host(env, socket_path=Path(var_dir) / "run" / "runner.sock")
    try:
        return measure(env, port=port, slug=slug, key=key)
    finally:
        host.terminate()
        host.wait(timeout=20)


def start_runner_host(env: dict, *, socket_path: Path) -> subprocess.Popen:
    """The Procfile's runner host, once it accepts connections (it imports scikit-learn first)."""
    # Not to a file: a runner may not write files (RLIMIT_FSIZE 0), its warnings included.
    host = subprocess.Popen(
        [sys.executable, "-m", "inference.runners.host"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(socket_path))
                return host
            except OSError:
                if host.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the runner host did not start (exit status {host.poll()})") from None
        time.sleep(0.1)


def measure(env: dict, *, port: int, slug: str, key: str) -> int:
    print(f"log: {env['VAR_DIR']}/web.log")
    with open(Path(env["VAR_DIR"]) / "web.log", "wb") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "platform_site.serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
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
        totals: dict[str, list[float]] = {}
        for index, (label, (content, row)) in enumerate(models().items()):
            for run in range(REPEAT):
                name = f"m{index}-{run}"
                requests.post(
                    f"{base}/api/v1/models", json={"org": slug, "name": name}, headers=headers, timeout=10
                ).raise_for_status()
                started = time.perf_counter()
                upload = requests.post(
                    f"{base}/api/v1/models/{slug}/{name}/versions",
                    files={"file": ("model.joblib", content)},
                    headers=headers,
                    timeout=120,
                )
                upload.raise_for_status()
                uploaded = time.perf_counter()
                requests.post(
                    f"{base}/api/v1/models/{slug}/{name}/versions/1/stage",
                    json={"stage": "production"},
                    headers=headers,
                    timeout=60,
                ).raise_for_status()
                promoted = time.perf_counter()
                answer = requests.post(
                    f"{base}/api/v1/models/{slug}/{name}/predict", json={"inputs": [row]}, headers=headers, timeout=60
                )
                if not answer.ok:
                    raise SystemExit(f"{label}: the first prediction failed: {answer.status_code} {answer.text}")
                done = time.perf_counter()
                assert isinstance(answer.json()["predictions"][0], (int, float)), answer.text
                totals.setdefault(label, []).append(done - started)
                print(
                    f"{label:40} {len(content) / 1e6:>8.2f}MB {uploaded - started:>8.2f}s {promoted - uploaded:>8.2f}s"
                    f" {done - promoted:>13.2f}s {done - started:>8.2f}s"
                )
        for label, seconds in totals.items():
            print(f"median upload-to-first-prediction, {label}: {statistics.median(seconds):.2f} s over {len(seconds)} runs")
    finally:
        web.terminate()
        web.wait(timeout=20)
    return 0


if __name__ == "__main__":
    np.random.seed(0)
    sys.exit(main())
