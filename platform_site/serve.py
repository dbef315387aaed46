"""The web process: granian serving platform_site.wsgi, configured from the environment.

    python -m platform_site.serve [target]        (the Procfile's `web`; target, a WSGI
                                                   application, defaults to
                                                   platform_site.wsgi:application)

granian runs it through its RSGI interface and platform_site.rsgi, which reads each request's
body on the worker's event loop and only then hands the request to a request thread: under
granian's WSGI interface a client that stalls mid-body held a thread (see that module).

Why granian: bench/server_choice.py measured, on this project's machine, the CPU each server
spends per request with the same application and two workers: the platform's predict costs
35 % less under granian's WSGI interface than under gunicorn's sync workers, and a bare
answer 80 % less; it keeps connections alive and spread them evenly over the workers in
every run, where gunicorn's threaded workers did not, and Django under uvicorn (ASGI) paid
a thread hop per request (twice gunicorn's CPU). See bench/RESULTS.md.

What the environment sets (docs/operations.md lists them):
  HOST, PORT                  where to listen (0.0.0.0:8000)
  WEB_CONCURRENCY             worker processes (2); each holds its own model cache
  WEB_THREADS                 Python threads per worker that run requests (2: while one waits
                              for Redis, the other computes; +13 % iris req/s over 1 in
                              bench/inference_bench.py, the same for a forest)
  WEB_HEADER_TIMEOUT_SECONDS  seconds a client has to send a request's headers (10)
  WEB_BODY_TIMEOUT_SECONDS    the longest pause while a request's body arrives (10); a client
                              that stalls is answered 408 (platform_site.rsgi)
  WEB_INTERFACE               rsgi (the default: the above; a linear model's predictions are
                              answered on the loop itself, platform_site.on_loop) or wsgi:
                              granian's WSGI threads read the bodies themselves, about 0.1-0.2 ms
                              of CPU a request cheaper and
                              unbounded: only behind an ingress that buffers request bodies
  WEB_WORKERS_LIFETIME        seconds after which a worker is replaced (0: never)
  WEB_WORKERS_MAX_RSS_MB      a worker over this resident memory is replaced (0: no limit)
  WEB_ACCESS_LOG              true to log every request
  PROMETHEUS_MULTIPROC_DIR    emptied here before the workers start (multiprocess metrics)
  OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS
                              native thread pools per process (1 unless set: see below)

The numeric libraries' own thread pools run one thread each unless the environment says
otherwise: a web worker already runs WEB_THREADS requests at once in WEB_CONCURRENCY
processes, and a one-row prediction is far too small to split. With OpenBLAS's default (a
thread per core) its idle threads spin between calls and take CPU from the requests: iris
predictions cost 5 % more CPU each (0.426 against 0.397 ms, median of six interleaved runs).

A worker that dies is started again (respawn); the metrics of a dead worker's live gauges
are dropped by the survivors (platform_site.metrics.forget_dead_processes). granian has no
per-request timeout; a model's predict runs in its organization's runner, which the web waits
for at most RUNNER_REQUEST_TIMEOUT_SECONDS (inference.runners.client).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

DEFAULT_TARGET = "platform_site.wsgi:application"
RSGI_TARGET = "platform_site.rsgi:application"


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, not {value!r}") from None


def request_threads() -> int:
    """WEB_THREADS: the threads per worker that run requests."""
    threads = _int("WEB_THREADS", 2)
    if threads < 1:
        raise SystemExit(f"WEB_THREADS must be at least 1, not {threads}")
    return threads


def web_interface() -> str:
    """WEB_INTERFACE: rsgi (bodies read before a thread takes the request) or wsgi (cheaper, unbounded)."""
    value = os.environ.get("WEB_INTERFACE", "").strip().lower() or "rsgi"
    if value not in ("rsgi", "wsgi"):
        raise SystemExit(f"WEB_INTERFACE must be rsgi or wsgi, not {value!r}")
    return value


def body_timeout_seconds() -> float:
    """WEB_BODY_TIMEOUT_SECONDS: the longest pause allowed while a request's body arrives."""
    value = os.environ.get("WEB_BODY_TIMEOUT_SECONDS", "").strip() or "10"
    try:
        seconds = float(value)
    except ValueError:
        raise SystemExit(f"WEB_BODY_TIMEOUT_SECONDS must be a number of seconds, not {value!r}") from None
    if not 0 < seconds <= 3600:
        raise SystemExit(f"WEB_BODY_TIMEOUT_SECONDS must be more than 0 and at most 3600, not {value!r}")
    return seconds


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


# The numeric libraries' thread pools (OpenBLAS, OpenMP, MKL) on one thread: the web workers'
# default here, and what the upload sandbox's child always gets (registry.loaders.sandbox).
ONE_NATIVE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NATIVE_THREAD_VARIABLES = tuple(ONE_NATIVE_THREAD)


def limit_native_threads() -> None:
    """One native (BLAS, OpenMP) thread per process unless the environment sets another number.

    Set before the workers start, so each reads it when numpy and scikit-learn load."""
    for name, value in ONE_NATIVE_THREAD.items():
        os.environ.setdefault(name, value)


def prepare_metrics_folder() -> None:
    """Multiprocess Prometheus metrics need an empty folder per server start."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        Path(folder).mkdir(parents=True, exist_ok=True)


def refuse_taken_port() -> None:
    """Exit with a message naming the holder when another process listens on HOST:PORT.

    granian binds with SO_REUSEPORT, so a second platform started on a taken port would
    silently get half of its connections (each with its own database and sessions). A plain
    bind, without SO_REUSEPORT, fails while anyone listens there.
    """
    import errno
    import socket

    host, port = os.environ.get("HOST", "0.0.0.0"), _int("PORT", 8000)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections closing (TIME_WAIT) do not count
        try:
            probe.bind((host, port))
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise SystemExit(
        f"Port {port} is already in use by {port_holder(port)}. Stop it, or start this one with PORT=<another port>."
    )


def port_holder(port: int) -> str:
    """Which process listens on the TCP port, as a person would recognise it (pid, command, folder)."""
    import psutil

    try:
        listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    except psutil.AccessDenied:
        listening = []
    for connection in listening:
        if connection.pid is None:
            continue
        try:
            process = psutil.Process(connection.pid)
            return f"process {process.pid} ({' '.join(process.cmdline())}, started in {process.cwd()})"
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return "another process (this user may not see which)"


def server(target: str = DEFAULT_TARGET):
    """granian serving the WSGI application `target` through platform_site.rsgi (which reads
    each body on the event loop before a request thread takes the request)."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    lifetime = _int("WEB_WORKERS_LIFETIME", 0)
    max_rss = _int("WEB_WORKERS_MAX_RSS_MB", 0)
    threads, interface = request_threads(), web_interface()
    body_timeout_seconds()  # checked here, read again in each worker
    if interface == "rsgi":
        os.environ["WEB_WSGI_TARGET"] = target  # the workers inherit it
        target_options = {"target": RSGI_TARGET, "interface": Interfaces.RSGI}
    else:  # granian's own WSGI threads read the bodies: only behind an ingress that buffers them
        target_options = {"target": target, "interface": Interfaces.WSGI, "blocking_threads": threads}
    return Granian(
        **target_options,
        address=os.environ.get("HOST", "0.0.0.0"),
        port=_int("PORT", 8000),
        workers=_int("WEB_CONCURRENCY", 2),
        http=HTTPModes.http1,
        # A client that has not sent its headers in time is disconnected (granian's default is
        # 30 s); the body's time is bounded by platform_site.rsgi (WEB_BODY_TIMEOUT_SECONDS).
        http1_settings=HTTP1Settings(header_read_timeout=_int("WEB_HEADER_TIMEOUT_SECONDS", 10) * 1000),
        websockets=False,
        respawn_failed_workers=True,
        workers_lifetime=lifetime or None,
        workers_max_rss=max_rss or None,
        workers_kill_timeout=20,
        log_access=_flag("WEB_ACCESS_LOG"),
    )


def preload_libraries() -> None:
    """Import the numeric libraries (and Django's and the clients' modules that read no settings)
    once, in the server process, before granian forks the workers.

    Each worker then starts with them loaded (their pages shared with the server process) instead
    of importing them itself, which was most of a worker's start: two workers importing pandas and
    scipy at once on a busy machine took tens of seconds. Importing them opens no connection and,
    with one native thread (limit_native_threads, first), starts no thread. scikit-learn is not
    among them: the web never imports it (tenants' models run in runners)."""
    for name in (
        "numpy",
        "pandas",
        "scipy.stats",
        "redis",
        "celery",
        "psycopg",
        "django.http",
        "django.db.models",
    ):
        importlib.import_module(name)


def preload_platform(target: str) -> None:
    """Django's set-up and every app's views, imported once in the server process before the
    workers fork, when it serves the platform's own application.

    Each worker would otherwise spend about a second of CPU on them itself (on a busy machine,
    several seconds before it answers). Only imports: no database or Redis connection is opened
    here, so none is shared across the fork; each worker opens its own (startup.warm_up)."""
    if target != DEFAULT_TARGET:
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform_site.settings")
    import django

    django.setup()
    from django.urls import get_resolver

    _ = get_resolver().url_patterns  # reading it imports every app's views


def main(argv: list[str]) -> None:
    target = argv[0] if argv else DEFAULT_TARGET
    refuse_taken_port()
    prepare_metrics_folder()
    limit_native_threads()
    preload_libraries()
    preload_platform(target)
    server(target).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
