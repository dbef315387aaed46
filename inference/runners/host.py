"""The runner host: ``python -m inference.runners.host [--socket PATH] [--listen HOST:PORT] [--sandbox-socket PATH]``.

The socket defaults to RUNNER_SOCKET, else $VAR_DIR/run/runner.sock (where the web's
RUNNER_ADDRESSES points by default). The sandbox socket defaults to SANDBOX_SOCKET, else
$VAR_DIR/run/sandbox.sock (the web's MODEL_CHECK_SOCKET): there the host is also the upload
check's fork server (``registry.loaders.sandbox_server``), forking a confined child per check
as user RUNNER_UID_BASE when root, a user no organization's runners have.

The Procfile's ``runner`` process. It starts clean: it re-executes itself with an
environment holding only its own settings (RUNNER_*), the locale and the numeric libraries'
thread counts, so nothing of the platform's configuration (SECRET_KEY, DATABASE_URL,
REDIS_URL, storage credentials) is in its memory or in /proc/<pid>/environ of anything it
forks. It never imports Django. It imports numpy, scipy, pandas and every scikit-learn
estimator module once (a fork server): a runner forked from it starts in milliseconds.

A client (a web or worker process) connects, sends ``{"org": <id>}``, and the host hands the
connection itself (SCM_RIGHTS) to a runner of that organization, forking one if none runs;
from then on the client talks to the runner directly, one hop. Per organization it runs up
to RUNNER_PROCESSES_PER_ORG runners and gives each new connection to the one holding fewest
(or, for a warm-up, to the runner its hello names by index, started if need be).

It keeps runners within RUNNER_MEMORY_BUDGET_MB of resident memory in all (stopping the
least recently used), stops runners idle for RUNNER_IDLE_SECONDS, and restarts a crashed
organization's runners with exponential backoff (RUNNER_BACKOFF_MAX_SECONDS); during a
backoff a client is told when to retry. ``{"op": "status"}`` answers what runs;
``{"op": "stop", "org": <id>}`` stops an organization's runners (a client whose request
timed out asks for this). Single-threaded (selectors), so forking is safe.

Settings (environment, read here because the host runs without Django):
  RUNNER_PROCESSES_PER_ORG     runners per organization (2)
  RUNNER_MEMORY_MB             address-space limit of one runner (4096)
  RUNNER_MODEL_CACHE_MB        artifact bytes one runner keeps loaded (1024)
  RUNNER_MEMORY_BUDGET_MB      resident memory of all runners together (8192)
  RUNNER_CPU_SECONDS           CPU one request may use before the runner is stopped (30)
  RUNNER_IDLE_SECONDS          a runner unused this long is stopped (900)
  RUNNER_BACKOFF_MAX_SECONDS   longest wait before restarting a crashing organization (30)
  RUNNER_UID_BASE              when started as root, each organization's runners run as
                               uid RUNNER_UID_BASE + org id (a user of their own) (200000)
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

logger = logging.getLogger("modelhost.runner_host")

_KEPT_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_CLEAN_MARKER = "MODELHOST_RUNNER_HOST_CLEAN"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_HELLO_TIMEOUT = 2.0
_RECENT_CRASH_SECONDS = 60.0


def clean_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment the host runs with: its own settings, the locale, one BLAS thread."""
    env = {name: environ[name] for name in _KEPT_ENVIRONMENT if name in environ}
    env.update({name: value for name, value in environ.items() if name.startswith("RUNNER_")})
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    env.update({"PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "PYTHONIOENCODING": "utf-8", _CLEAN_MARKER: "1"})
    return env


@dataclass
class HostSettings:
    processes_per_org: int = 2
    memory_mb: int = 4096
    model_cache_mb: int = 1024
    memory_budget_mb: int = 8192
    cpu_seconds: int = 30
    idle_seconds: float = 900.0
    backoff_max_seconds: float = 30.0
    uid_base: int = 200_000

    @classmethod
    def from_environment(cls, environ: dict[str, str]) -> HostSettings:
        def number(name: str, default, kind=int):
            raw = environ.get(name, "").strip()
            if not raw:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise SystemExit(f"{name} must be a number, not {raw!r}") from None

        return cls(
            processes_per_org=max(1, number("RUNNER_PROCESSES_PER_ORG", cls.processes_per_org)),
            memory_mb=number("RUNNER_MEMORY_MB", cls.memory_mb),
            model_cache_mb=number("RUNNER_MODEL_CACHE_MB", cls.model_cache_mb),
            memory_budget_mb=number("RUNNER_MEMORY_BUDGET_MB", cls.memory_budget_mb),
            cpu_seconds=max(1, number("RUNNER_CPU_SECONDS", cls.cpu_seconds)),
            idle_seconds=number("RUNNER_IDLE_SECONDS", cls.idle_seconds, float),
            backoff_max_seconds=number("RUNNER_BACKOFF_MAX_SECONDS", cls.backoff_max_seconds, float),
            uid_base=number("RUNNER_UID_BASE", cls.uid_base),
        )


@dataclass
class _Runner:
    org_id: int
    pid: int
    control: socket.socket
    started: float
    last_used: float
    connections: int = 0
    models: int = 0  # versions it holds, by its own report
    stopping: bool = False
    ended: bool = False  # its control socket closed; not reaped yet


@dataclass
class _OrgState:
    runners: list[_Runner] = field(default_factory=list)
    crashes: list[float] = field(default_factory=list)
    retry_at: float = 0.0


class RunnerHost:
    def __init__(self, *, listeners: list[socket.socket], settings: HostSettings) -> None:
        self.listeners = listeners
        self.settings = settings
        self.orgs: dict[int, _OrgState] = {}
        self.by_pid: dict[int, _Runner] = {}
        self.selector = selectors.DefaultSelector()
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.started_runners = 0
        self.crashed_runners = 0
        self.sandbox = None  # the upload check's fork server, when it listens (main)

    # --- the loop -----------------------------------------------------------------------

    def serve_forever(self) -> None:
        for listener in self.listeners:
            listener.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ, "listener")
        last_sweep = 0.0
        while True:
            for key, _ in self.selector.select(timeout=0.5):
                if key.data == "listener":
                    self._accept(key.fileobj)
                elif callable(key.data):  # the sandbox service's sockets
                    key.data()
                else:
                    self._read_report(key.data)
            self._reap()
            now = time.monotonic()
            if now - last_sweep >= 1.0:
                last_sweep = now
                self._sweep(now)

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        conn.settimeout(_HELLO_TIMEOUT)
        from inference.runners import wire

        try:
            hello, _ = wire.receive(conn, max_bytes=64 * 1024)
            self._answer(conn, hello)
        except wire.PeerClosed:
            pass  # a TCP readiness probe: connected, said nothing, left
        except Exception as exc:  # noqa: BLE001 - one bad client must not stop the host
            logger.warning("runner host: a client's hello failed: %s", exc)
        finally:
            conn.close()  # the runner holds its own copy of a connection handed to it

    def _answer(self, conn: socket.socket, hello: dict) -> None:
        from inference.runners import wire

        op = hello.get("op", "connect")
        if op == "status":
            wire.send(conn, self.status())
            return
        org_id = hello.get("org")
        if not isinstance(org_id, int) or isinstance(org_id, bool) or org_id <= 0:
            wire.send(conn, {"ok": False, "reason": "a hello names an organization id"})
            return
        if op == "stop":
            self.stop_org(org_id, signal.SIGKILL)
            wire.send(conn, {"ok": True})
            return
        state = self.orgs.setdefault(org_id, _OrgState())
        now = time.monotonic()
        backing_off = state.retry_at > now
        if not state.runners and backing_off:
            wire.send(
                conn,
                {
                    "ok": False,
                    "retry_after": round(state.retry_at - now, 3),
                    "reason": "the organization's runner is restarting after a crash",
                },
            )
            return
        wanted = hello.get("runner")  # a warm-up names each runner in turn; traffic names none
        if isinstance(wanted, int) and not isinstance(wanted, bool) and 0 <= wanted < self.settings.processes_per_org:
            while len(state.runners) <= wanted and not backing_off:
                self._spawn(org_id)
            runner = state.runners[min(wanted, len(state.runners) - 1)]
        else:
            runner = min(state.runners, key=lambda r: r.connections) if state.runners else None
            if runner is None or (
                runner.connections > 0 and len(state.runners) < self.settings.processes_per_org and not backing_off
            ):
                runner = self._spawn(org_id)
        runner.connections += 1  # until the runner's next report says how many it holds
        runner.last_used = now
        socket.send_fds(runner.control, [b"c"], [conn.fileno()])

    # --- runners ------------------------------------------------------------------------

    def _spawn(self, org_id: int) -> _Runner:
        from inference.runners.runner import RunnerLimits, run

        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        limits = RunnerLimits(
            memory_mb=self.settings.memory_mb,
            model_cache_mb=self.settings.model_cache_mb,
            cpu_seconds=self.settings.cpu_seconds,
            uid=self.settings.uid_base + org_id if self.settings.uid_base > 0 else None,
        )
        pid = os.fork()
        if pid == 0:  # the runner: keep only its end of the control pair
            try:
                keep = child_end.fileno()
                os.closerange(3, keep)
                os.closerange(keep + 1, 65536)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                run(control=child_end, org_id=org_id, limits=limits)
            finally:
                os._exit(1)
        child_end.close()
        now = time.monotonic()
        runner = _Runner(org_id=org_id, pid=pid, control=parent_end, started=now, last_used=now)
        self.orgs.setdefault(org_id, _OrgState()).runners.append(runner)
        self.by_pid[pid] = runner
        self.selector.register(parent_end, selectors.EVENT_READ, runner)
        self.started_runners += 1
        logger.info("runner host: started runner %s for organization %s", pid, org_id)
        return runner

    def _read_report(self, runner: _Runner) -> None:
        try:
            message = runner.control.recv(4096, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            message = b""
        if not message:  # it exited (or closed its end): the reaper says whether it crashed
            runner.ended = True
            self._forget(runner)
            return
        try:
            report = orjson.loads(message)
            runner.last_used = time.monotonic() - float(report.get("idle", 0.0))
            runner.connections = int(report.get("connections", runner.connections))
            runner.models = max(0, min(int(report.get("models", runner.models)), 1_000_000))
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            pass  # a runner may be subverted: its reports only ever delay its own stop

    def _forget(self, runner: _Runner) -> None:
        if runner.control.fileno() != -1:
            self.selector.unregister(runner.control)
            runner.control.close()
        state = self.orgs.get(runner.org_id)
        if state is not None and runner in state.runners:
            state.runners.remove(runner)
        if runner.ended and not runner.stopping and runner.pid in self.by_pid and state is not None:
            # Until the reaper has its exit status, treat it as a crash in progress: a new runner
            # started now would escape the backoff a crash loop must meet.
            state.retry_at = max(state.retry_at, time.monotonic() + 0.25)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            runner = self.by_pid.pop(pid, None)
            if runner is None:
                if self.sandbox is not None:
                    self.sandbox.reaped(pid, status)
                continue
            self._forget(runner)
            if not runner.stopping and not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                self._note_crash(runner, status)

    def _note_crash(self, runner: _Runner, status: int) -> None:
        now = time.monotonic()
        state = self.orgs.setdefault(runner.org_id, _OrgState())
        state.crashes = [t for t in state.crashes if now - t < _RECENT_CRASH_SECONDS] + [now]
        delay = min(self.settings.backoff_max_seconds, 0.25 * 2 ** (len(state.crashes) - 1))
        state.retry_at = now + delay
        self.crashed_runners += 1
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {os.WEXITSTATUS(status)}"
        logger.warning(
            "runner host: runner %s of organization %s died (%s); next start in %.2f s", runner.pid, runner.org_id, how, delay
        )

    def stop_org(self, org_id: int, sig: int = signal.SIGTERM) -> None:
        for runner in list(self.orgs.get(org_id, _OrgState()).runners):
            self._stop(runner, sig)

    def _stop(self, runner: _Runner, sig: int = signal.SIGTERM) -> None:
        runner.stopping = True
        try:
            os.kill(runner.pid, sig)
        except ProcessLookupError:
            pass
        self._forget(runner)

    def _rss_mb(self, pid: int) -> float:
        """A runner's proportional set size (its share of pages it shares with the host and its
        siblings), or its resident size where /proc does not show the former."""
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
                for line in handle:
                    if line.startswith(b"Pss:"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                return int(handle.read().split()[1]) * self.page_size / (1024 * 1024)
        except (OSError, IndexError, ValueError):
            return 0.0

    def _sweep(self, now: float) -> None:
        if self.sandbox is not None:
            self.sandbox.kill_overdue(now)
        runners = [r for state in self.orgs.values() for r in state.runners]
        for runner in runners:
            if now - runner.last_used > self.settings.idle_seconds:
                logger.info("runner host: stopping idle runner %s of organization %s", runner.pid, runner.org_id)
                self._stop(runner)
        runners = sorted((r for state in self.orgs.values() for r in state.runners), key=lambda r: r.last_used)
        total = sum(self._rss_mb(r.pid) for r in runners)
        while len(runners) > 1 and total > self.settings.memory_budget_mb:
            oldest = runners.pop(0)
            total -= self._rss_mb(oldest.pid)
            logger.info(
                "runner host: over the %s MiB budget; stopping runner %s of organization %s",
                self.settings.memory_budget_mb,
                oldest.pid,
                oldest.org_id,
            )
            self._stop(oldest)

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "ok": True,
            "pid": os.getpid(),
            "started_runners": self.started_runners,
            "crashed_runners": self.crashed_runners,
            "memory_budget_mb": self.settings.memory_budget_mb,
            "runners": [
                {
                    "org": r.org_id,
                    "pid": r.pid,
                    "rss_mb": round(self._rss_mb(r.pid), 1),
                    "idle_seconds": round(now - r.last_used, 3),
                    "connections": r.connections,
                    "models": r.models,
                }
                for state in self.orgs.values()
                for r in state.runners
            ],
            "backoff": {str(org): round(s.retry_at - now, 3) for org, s in self.orgs.items() if s.retry_at > now},
        }


def preload() -> None:
    """Import what runners need once, before any fork.

    A runner started as root switches to a user of its own, which may not read the
    interpreter's files: so every scikit-learn module (its estimators and what their predict
    imports lazily), the loader and what it imports are imported here, then shared by fork.
    """
    # Imported for their side effect: each module is loaded once here, before any fork.
    import bz2  # noqa: F401 - joblib's decompressors
    import encodings.cp437  # noqa: F401 - zipfile's names (skops files), imported on first use
    import gzip  # noqa: F401 - joblib's decompressors
    import lzma  # noqa: F401 - joblib's decompressors
    import pickletools  # noqa: F401
    import pkgutil
    import zlib  # noqa: F401 - joblib's decompressors

    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import scipy.linalg  # noqa: F401
    import scipy.optimize  # noqa: F401
    import scipy.sparse  # noqa: F401
    import scipy.sparse.linalg  # noqa: F401
    import scipy.special  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn
    from joblib import compressor, numpy_pickle, numpy_pickle_utils  # noqa: F401

    skipped = {"tests", "conftest", "externals", "experimental", "_build_utils"}
    with _quiet_warnings():
        for module in pkgutil.walk_packages(sklearn.__path__, "sklearn."):
            if skipped.intersection(module.name.split(".")):
                continue
            try:
                __import__(module.name)
            except ImportError:  # a module behind an optional dependency this machine lacks
                pass
    # shap (explanations) is imported by a runner only when asked to explain, for its memory
    # (60-170 MB: README, "Explanations"); what it takes from the standard library, which a
    # runner's own user may not read, is imported here.
    import importlib.readers  # noqa: F401
    import plistlib  # noqa: F401
    import xml.parsers.expat  # noqa: F401

    import skops.io  # noqa: F401

    from inference.runners import explainers, runner, wire  # noqa: F401
    from registry.loaders import (  # noqa: F401
        allowlist,
        compiled,
        describe,
        formats,
        pickle_audit,
        safe_pickle,
        sandbox_child,
        sandbox_server,
        serving,
        skops_format,
        structure,
    )

    compiled.warm_runtime()


class _quiet_warnings:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def _register_bare_platform_site() -> None:
    """``registry.loaders`` raises ``platform_site.errors``; import that module alone, not Django."""
    import types

    if "platform_site" in sys.modules:
        return
    package = types.ModuleType("platform_site")
    package.__path__ = [str(_REPO_ROOT / "platform_site")]
    package.__package__ = "platform_site"
    sys.modules["platform_site"] = package


def listen(*, unix_path: str | None, address: str | None) -> list[socket.socket]:
    listeners = []
    if unix_path:
        path = Path(unix_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                raise SystemExit(f"A runner host already listens on {path}.")
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink()
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)  # only this user (the platform's) may ask for runners
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        sock.listen(256)
        listeners.append(sock)
    if address:
        host, _, port = address.rpartition(":")
        sock = socket.create_server((host or "0.0.0.0", int(port)), backlog=256)
        listeners.append(sock)
    return listeners


def _sandbox_service(host: RunnerHost, listeners: list[socket.socket]):
    from inference.runners.runner import RunnerLimits, confine
    from registry.loaders.sandbox_server import SandboxService

    # RUNNER_UID_BASE itself: organizations' runners are RUNNER_UID_BASE + their id (ids start at 1).
    uid = host.settings.uid_base if host.settings.uid_base > 0 else None

    def confine_check(memory_mb: int) -> list[str]:
        return confine(limits=RunnerLimits(memory_mb=memory_mb, model_cache_mb=0, cpu_seconds=0, uid=uid, max_connections=0))

    return SandboxService(listeners=listeners, selector=host.selector, confine=confine_check)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.runners.host", description="Start the runner host.")
    parser.add_argument("--socket", help="a Unix socket to listen on (RUNNER_SOCKET)")
    parser.add_argument("--listen", help="HOST:PORT to listen on, for runner pods (RUNNER_LISTEN)")
    parser.add_argument("--sandbox-socket", help="a Unix socket to serve upload checks on (SANDBOX_SOCKET)")
    args = parser.parse_args(argv)
    if os.environ.get(_CLEAN_MARKER) != "1":
        environ = dict(os.environ)
        command = [sys.executable, "-s", "-m", "inference.runners.host"]
        var_dir = Path(environ.get("VAR_DIR") or _REPO_ROOT / "var")
        socket_path = args.socket or environ.get("RUNNER_SOCKET") or str(var_dir / "run" / "runner.sock")
        command += ["--socket", str(Path(socket_path).resolve())]
        if args.listen or environ.get("RUNNER_LISTEN"):
            command += ["--listen", args.listen or environ["RUNNER_LISTEN"]]
        sandbox_path = args.sandbox_socket or environ.get("SANDBOX_SOCKET") or str(var_dir / "run" / "sandbox.sock")
        command += ["--sandbox-socket", str(Path(sandbox_path).resolve())]
        os.chdir(_REPO_ROOT)
        os.execve(sys.executable, command, clean_environment(environ))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _register_bare_platform_site()
    started = time.perf_counter()
    preload()
    settings = HostSettings.from_environment(dict(os.environ))
    listeners = listen(unix_path=args.socket, address=args.listen)
    sandbox_listeners = listen(unix_path=args.sandbox_socket, address=None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logger.info(
        "runner host: ready in %.2f s on %s",
        time.perf_counter() - started,
        ", ".join(str(s.getsockname()) for s in listeners + sandbox_listeners),
    )
    host = RunnerHost(listeners=listeners, settings=settings)
    if sandbox_listeners:
        host.sandbox = _sandbox_service(host, sandbox_listeners)
    try:
        host.serve_forever()
    finally:
        for state in host.orgs.values():
            for runner in list(state.runners):
                host._stop(runner)


if __name__ == "__main__":
    main(sys.argv[1:])
