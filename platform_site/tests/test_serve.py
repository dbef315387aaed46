"""platform_site.serve: the web server's settings come from the environment, checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from platform_site import serve


def test_defaults_serve_the_wsgi_application_on_two_workers(monkeypatch):
    for name in (
        "HOST",
        "PORT",
        "WEB_CONCURRENCY",
        "WEB_THREADS",
        "WEB_HEADER_TIMEOUT_SECONDS",
        "WEB_BODY_TIMEOUT_SECONDS",
        "WEB_INTERFACE",
        "WEB_WORKERS_LIFETIME",
        "WEB_WORKERS_MAX_RSS_MB",
        "WEB_ACCESS_LOG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WEB_WSGI_TARGET", "")  # server() names the WSGI target there; restored after
    server = serve.server()
    # granian's RSGI interface runs platform_site.rsgi, which runs the WSGI application.
    assert server.target == "platform_site.rsgi:application"
    assert serve.os.environ["WEB_WSGI_TARGET"] == "platform_site.wsgi:application"
    assert (serve.request_threads(), serve.body_timeout_seconds()) == (2, 10.0)
    assert (server.bind_addr, server.bind_port) == ("0.0.0.0", 8000)
    assert server.workers == 2
    assert server.http1_settings.header_read_timeout == 10_000
    assert server.respawn_failed_workers is True
    assert server.workers_lifetime is None and server.workers_rss is None
    assert server.interface.value == "rsgi" and server.http.value == "1"


def test_the_environment_sets_the_server(monkeypatch):
    monkeypatch.setenv("WEB_WSGI_TARGET", "")
    monkeypatch.setenv("HOST", "127.0.0.1")
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    monkeypatch.setenv("WEB_THREADS", "3")
    monkeypatch.setenv("WEB_HEADER_TIMEOUT_SECONDS", "4")
    monkeypatch.setenv("WEB_WORKERS_LIFETIME", "3600")
    monkeypatch.setenv("WEB_WORKERS_MAX_RSS_MB", "900")
    monkeypatch.setenv("WEB_BODY_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("WEB_ACCESS_LOG", "true")
    server = serve.server("floor_app:app")
    assert serve.os.environ["WEB_WSGI_TARGET"] == "floor_app:app"
    assert (server.bind_addr, server.bind_port, server.workers) == ("127.0.0.1", 9123, 4)
    assert (serve.request_threads(), serve.body_timeout_seconds()) == (3, 2.5)
    assert server.http1_settings.header_read_timeout == 4000
    assert (server.workers_lifetime, server.workers_rss, server.log_access) == (3600, 900 * 1024 * 1024, True)


def test_a_malformed_number_stops_the_server_naming_the_variable(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "two")
    with pytest.raises(SystemExit, match="WEB_CONCURRENCY must be a whole number, not 'two'"):
        serve.server()


def test_behind_a_buffering_ingress_granians_wsgi_threads_can_read_the_bodies(monkeypatch):
    monkeypatch.setenv("WEB_INTERFACE", "wsgi")
    monkeypatch.setenv("WEB_THREADS", "3")
    server = serve.server("floor_app:app")
    assert (server.target, server.interface.value, server.blocking_threads) == ("floor_app:app", "wsgi", 3)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WEB_THREADS", "0", "WEB_THREADS must be at least 1, not 0"),
        ("WEB_INTERFACE", "asgi", "WEB_INTERFACE must be rsgi or wsgi, not 'asgi'"),
        ("WEB_BODY_TIMEOUT_SECONDS", "soon", "WEB_BODY_TIMEOUT_SECONDS must be a number of seconds, not 'soon'"),
        ("WEB_BODY_TIMEOUT_SECONDS", "0", "WEB_BODY_TIMEOUT_SECONDS must be more than 0 and at most 3600, not '0'"),
    ],
)
def test_bad_request_settings_stop_the_server_naming_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=message):
        serve.server()


def test_the_metrics_folder_is_emptied_at_start(monkeypatch, tmp_path):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_123.db").write_bytes(b"stale")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    serve.prepare_metrics_folder()
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_a_dead_processes_live_gauges_are_dropped(monkeypatch, tmp_path):
    from platform_site.metrics import forget_dead_processes

    folder = tmp_path / "prometheus"
    folder.mkdir()
    # A real process writes a live gauge and a counter, then exits.
    code = (
        "from prometheus_client import Counter, Gauge;"
        "Gauge('g', 'g', multiprocess_mode='livesum').set(3); Counter('c', 'c').inc();"
        "import os; print(os.getpid())"
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder), "PATH": "/usr/bin:/bin"}
    dead = int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert (folder / f"gauge_livesum_{dead}.db").exists()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    assert forget_dead_processes() == [dead]
    assert not (folder / f"gauge_livesum_{dead}.db").exists()
    assert (folder / f"counter_{dead}.db").exists()  # counters keep what the process counted


def test_native_thread_pools_get_one_thread_unless_the_environment_says_otherwise(monkeypatch):
    for name in serve.NATIVE_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    seen = {}

    class Server:
        def serve(self):
            seen.update({name: serve.os.environ.get(name) for name in serve.NATIVE_THREAD_VARIABLES})

    monkeypatch.setattr(serve, "server", lambda target: Server())
    monkeypatch.setattr(serve, "prepare_metrics_folder", lambda: None)
    monkeypatch.setattr(serve, "refuse_taken_port", lambda: None)
    serve.main([])
    assert seen == {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "1"}


def test_a_worker_process_runs_blas_on_one_thread():
    """What the workers inherit: numpy's OpenBLAS reads the variable when it loads."""
    code = (
        "from platform_site import serve; serve.limit_native_threads();"
        "import numpy, threadpoolctl;"
        "print(sorted({p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas'}))"
    )
    env = {k: v for k, v in serve.os.environ.items() if k not in serve.NATIVE_THREAD_VARIABLES}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[1]"


def test_the_server_process_loads_the_numeric_libraries_before_the_workers_fork(tmp_path):
    """granian forks its workers from this process: what is imported here, they start with."""
    code = (
        "import sys; from platform_site import serve\n"
        "class Server:\n"
        "    def serve(self):\n"
        "        print(sorted(name for name in ('numpy', 'pandas', 'scipy.stats', 'sklearn') if name in sys.modules))\n"
        "        from django.db import connections\n"
        "        print('inference.views_native' in sys.modules, [c.connection for c in connections.all()])\n"
        "serve.server = lambda target: Server(); serve.refuse_taken_port = lambda: None\n"
        "serve.main([])\n"
    )
    env = {k: v for k, v in serve.os.environ.items() if k not in serve.NATIVE_THREAD_VARIABLES}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prometheus")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    # scikit-learn is not among them: the web never imports it (tenants' models run in runners).
    libraries, platform = out.stdout.strip().splitlines()
    assert libraries == "['numpy', 'pandas', 'scipy.stats']"
    # Django and every view are imported before the fork too, with no connection open to share.
    assert platform == "True [None]"
