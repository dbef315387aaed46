"""A second platform on a taken port refuses to start and names the process that holds it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from platform_site.tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
CHECK = "from platform_site.serve import refuse_taken_port; refuse_taken_port()"


def listening_like_granian(port: int) -> socket.socket:
    """A listener bound as granian binds: with SO_REUSEPORT, which lets a second one share the port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def check_port(port: int, *, host: str = "127.0.0.1") -> subprocess.CompletedProcess:
    env = {**os.environ, "PORT": str(port), "HOST": host}
    return subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_a_free_port_is_accepted():
    result = check_port(free_port())
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_taken_port_is_refused_naming_the_holder(host):
    port = free_port()
    with listening_like_granian(port):
        result = check_port(port, host=host)
    assert result.returncode == 1
    assert f"Port {port} is already in use by process {os.getpid()} (" in result.stderr
    assert f"started in {os.getcwd()})" in result.stderr
    assert "PORT=<another port>" in result.stderr


@pytest.mark.slow
def test_make_run_on_a_taken_port_stops_before_starting_anything(tmp_path):
    """scripts/run.sh checks first: no embedded Redis, no migration, nothing half-started."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL"}}
    env.update({"PORT": str(port), "VAR_DIR": str(tmp_path / "var")})
    with listening_like_granian(port):
        result = subprocess.run(["bash", "scripts/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"Port {port} is already in use by process {os.getpid()}" in result.stderr
    assert sorted(path.name for path in (tmp_path / "var").iterdir()) == ["prometheus"]
