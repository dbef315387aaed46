"""Start the platform the way `make run` starts it (scripts/run.sh), for tests that need all of it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from platform_site.tests.processes import free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[2]
# What the test suite's Makefile sets and a newcomer's shell does not: make run sees none of it.
SUITE_VARIABLES = {
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "SECURE_SSL_REDIRECT",
    "MODEL_STORAGE_ROOT",
    "RECORD_FLUSH_SECONDS",
    "PROMETHEUS_MULTIPROC_DIR",
    "CELERY_BROKER_URL",
    "MLFLOW_TRACKING_URI",
    "PORT",
    "HOST",
    "VAR_DIR",
    "RUNNER_ADDRESSES",
}


@dataclass
class Platform:
    base_url: str
    api_key: str
    var_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_make_run(*, folder: Path, environment: dict[str, str] | None = None, timeout: float = 300) -> Iterator[Platform]:
    """scripts/run.sh with the embedded defaults (or `environment`'s), in `folder`; stopped with Ctrl-C's signal."""
    port = free_port()
    var_dir = folder / "var"
    log_path = folder / "make-run.log"
    env = {k: v for k, v in os.environ.items() if k not in SUITE_VARIABLES}
    env.update({"PORT": str(port), "VAR_DIR": str(var_dir), **(environment or {})})
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ["bash", "scripts/run.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    platform = Platform(base_url=f"http://127.0.0.1:{port}", api_key="", var_dir=var_dir, log_path=log_path)
    try:
        wait_for_http(f"{platform.base_url}/readyz", process, timeout=timeout, log=platform.log)
        platform.api_key = re.search(r"API key:\s+(mh_\S+)", platform.log()).group(1)
        yield platform
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGINT to the whole group, as the terminal's Ctrl-C does; SIGKILL if it does not stop in time."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
