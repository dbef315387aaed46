"""Real Celery worker and beat processes for tests, against this session's test database.

The processes run `celery --app platform_site worker|beat` with a broker of the test's
choosing (a Redis database of its own) and DATABASE_URL pointing at the test database; the
tests commit their data (transaction=True) so the processes see it. Nothing is faked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def current_database_url() -> str:
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return f"postgres://{s['USER']}{password}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def worker_broker_url(variable: str = "TEST_BROKER_REDIS_DB", default: int = 12) -> str:
    """Redis database `variable` (`default` unless set) of the suite's Redis: the workers' own broker.

    Each module that empties its broker has its own variable, so two suites on one Redis (two
    checkouts) can be given databases that do not meet.
    """
    from django.conf import settings

    parts = urlsplit(settings.REDIS_URL or "redis://127.0.0.1:6379/0")
    return urlunsplit(parts._replace(path=f"/{os.environ.get(variable, str(default))}"))


class CeleryProcess:
    """One `celery` command in its own process group, its output in a temporary log file."""

    ready_marker = ""

    def __init__(self, name: str, env: dict, arguments: list[str]) -> None:
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"celery-{name}-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "--app", "platform_site", *arguments, "--loglevel", "INFO"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_marker in self.output():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{self.name} did not start:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the process and its children at once: no shutdown, no ack, nothing flushed."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()
        os.unlink(self.log.name)


class Worker(CeleryProcess):
    ready_marker = " ready."

    def __init__(self, name: str, env: dict, *, queues: str = "batch,default", concurrency: int = 1) -> None:
        super().__init__(
            name,
            env,
            [
                "worker",
                "--queues",
                queues,
                "--concurrency",
                str(concurrency),
                "-n",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
        )


class Beat(CeleryProcess):
    ready_marker = "beat: Starting"

    def __init__(self, name: str, env: dict) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="celery-beat-")
        super().__init__(name, env, ["beat", "--schedule", str(Path(self.folder.name) / "schedule")])

    def stop(self) -> None:
        super().stop()
        self.folder.cleanup()


class WorkerPool:
    """Workers (and a beat) started on demand, all with the same environment; stopped together."""

    def __init__(self, *, broker: str, settings_module: str = "platform_site.settings", env: dict | None = None) -> None:
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings_module,
            "CELERY_BROKER_URL": broker,
            "DATABASE_URL": current_database_url(),
            **(env or {}),
        }
        self.workers: dict[str, CeleryProcess] = {}

    def start(self, *names: str, **options) -> list[Worker]:
        """Start the named workers that are not running, without waiting; returns those started."""
        started = []
        for name in names:
            if name not in self.workers or self.workers[name].process.poll() is not None:
                if name in self.workers:
                    self.workers[name].stop()
                self.workers[name] = Worker(name, self.env, **options)
                started.append(self.workers[name])
        return started

    def ensure(self, *names: str, **options) -> list[Worker]:
        """Start the named workers that are not running (in parallel) and wait until each is ready."""
        for worker in self.start(*names, **options):
            worker.wait_ready()
        return [self.workers[name] for name in names]

    def start_beat(self, name: str = "beat") -> Beat:
        """Start the beat without waiting; `wait_ready()` on the answer when it matters."""
        beat = self.workers[name] = Beat(name, self.env)
        return beat

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{w.output()[-4000:]}" for name, w in self.workers.items())

    def stop(self) -> None:
        for worker in self.workers.values():  # all at once: each shutdown takes a second or two
            if worker.process.poll() is None:
                os.killpg(worker.process.pid, signal.SIGTERM)
        for worker in self.workers.values():
            worker.stop()


@contextmanager
def publishing_to(url: str):
    """Make this process's Celery app send to `url` (the app may already hold a pool for another broker)."""
    from platform_site.celery import app

    def reset() -> None:
        # Drop the pools (as Celery does after a fork); kombu's registry keeps them for their own broker.
        app._pool = None
        app.amqp._producer_pool = None

    previous = app.conf.broker_url
    reset()
    app.conf.broker_url = url
    try:
        yield
    finally:
        reset()
        app.conf.broker_url = previous


@contextmanager
def one_worker(name: str, *, queues: str):
    """A real worker consuming `queues` on the suite's own broker (emptied before and after),
    with this process's Celery app publishing to it: the fixture a test of one worker needs."""
    import redis

    broker = worker_broker_url()
    redis.Redis.from_url(broker).flushdb()
    pool = WorkerPool(broker=broker)
    try:
        pool.ensure(name, queues=queues)
        with publishing_to(broker):
            yield pool
    finally:
        pool.stop()  # before the test database is dropped: the worker holds connections to it
        redis.Redis.from_url(broker).flushdb()
