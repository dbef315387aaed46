"""Helpers for tests that start real servers (the web server, mlflow, moto) as child processes."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, *, timeout: float, log=lambda: "") -> None:
    """Return once `url` answers 200; fail with the process's log if it dies or never answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer (exit status {process.poll()}):\n{log()}")
        time.sleep(0.2)


def database_url() -> str:
    """DATABASE_URL for a child process that should use the test's database."""
    from django.db import connection

    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


# The bearer token /metrics asks of a web process these helpers start (METRICS_TOKEN).
METRICS_TOKEN = "metrics-token-of-the-test-servers"
METRICS_HEADERS = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def web_process_env(*, port: int, metrics_dir, settings) -> dict[str, str]:
    """The environment to run `python -m platform_site.serve` against the test's database and storage."""
    import os

    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "METRICS_TOKEN": METRICS_TOKEN,
        "MODEL_STORAGE_ROOT": str(settings.STORAGES["models"]["OPTIONS"]["location"]),
        "WEB_CONCURRENCY": "2",
        "PORT": str(port),
        "HOST": "127.0.0.1",
    }


@contextlib.contextmanager
def start_runner_host(
    *, socket_path: str, sandbox_socket_path: str | None = None, extra_env: dict[str, str] | None = None, timeout: float = 120.0
):
    """A real runner host (`python -m inference.runners.host`) on `socket_path`, stopped at exit;
    its sandbox socket (upload checks) is `sandbox_socket_path`, else beside `socket_path`."""
    import os
    import sys
    from pathlib import Path

    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.parent / f"{path.stem}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "inference.runners.host",
                "--socket",
                str(path),
                "--sandbox-socket",
                sandbox_socket_path or str(path.with_name(f"{path.stem}-sandbox.sock")),
            ],
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, **(extra_env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    try:
        while True:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                if process.poll() is not None:  # another host answers there, not this one
                    raise RuntimeError(f"the runner host exited (status {process.poll()}):\n{log.read_text()[-3000:]}")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the runner host did not start (exit status {process.poll()}):\n{log.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.1)
            finally:
                probe.close()
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
