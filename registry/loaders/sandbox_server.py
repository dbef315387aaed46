"""The upload check's fork server: checks forked from the runner host, with no interpreter start.

``python -m registry.loaders.sandbox_child`` spends about a second, most of an upload, starting
Python and importing scikit-learn. The runner host (``inference.runners.host``) has already
imported them and holds no secrets (it started from a scrubbed environment and never imports
Django), so it also listens on a second Unix socket (MODEL_CHECK_SOCKET on the web's side,
``--sandbox-socket``/SANDBOX_SOCKET on the host's) and calls ``SandboxService`` for it. For
each request the service forks a child that confines itself (the host's ``confine``, with the
check's own address-space limit, a CPU limit from its timeout and, under root, a user id no
organization's runner has), then runs ``sandbox_child.write_report`` exactly as the
subprocess does.

The web never lets the child read its filesystem: it opens the estimator file itself and
passes the open descriptor, with the write ends of two pipes standing in for the
subprocess's stdout and stderr, over SCM_RIGHTS:

- client -> service: one frame, a 4-byte big-endian length and a JSON request
  (``fmt`` of the estimator file: joblib, pickle or skops; ``saved_sklearn_version``, the
  version an MLflow MLmodel names; ``input_example``; ``timeout_s``; ``memory_mb``), with
  three descriptors attached: the model file (read-only), the report pipe, the stderr pipe;
  ``{"op": "status"}`` with none asks what runs.
- service -> client: a JSON line ``{"ok": true, "pid": ...}`` once the child runs (or
  ``{"ok": false, "reason": ...}``), then ``{"returncode": n}`` once it has exited
  (negative: the signal that ended it, as ``subprocess`` says).
- A client that closes the connection before that has given up (its timeout passed): the
  service kills the child with SIGKILL. A child still running ``timeout_s`` plus a grace
  period after it started is killed too, whether or not anyone waits for it.

The host's loop owns the selector: the service registers its sockets with a callable as the
key's data, and the host calls it when the socket is readable, ``reaped`` for each child
pid it reaps that is not a runner, and ``kill_overdue`` once a second. Everything runs on
the host's one thread, so a pid is never signalled after it was reaped (and reused).

Hand-written framing rather than the runners' ``wire`` module: registry may not import
inference, and one length-prefixed JSON frame is all a request is.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("modelhost.sandbox_server")

_LENGTH = struct.Struct(">I")
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # an input example of at most 100 rows, as JSON
DESCRIPTORS = 3  # the model file, the report pipe, the stderr pipe
_REQUEST_TIMEOUT = 2.0
# How long past its own timeout a check may run before the service kills it unasked.
_GRACE_SECONDS = 5.0
_FORMATS = ("joblib", "pickle", "skops")
_MAX_FD = 65536


class RequestError(Exception):
    """The peer sent something that is not a check request."""


def send_request(sock: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """Send one request frame with `fds` attached to its first bytes."""
    body = json.dumps(request).encode()
    frame = _LENGTH.pack(len(body)) + body
    sent = socket.send_fds(sock, [frame], fds)
    if sent < len(frame):
        sock.sendall(frame[sent:])


def receive_request(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One request frame and the descriptors that came with it (the caller closes them)."""
    data, fds, _flags, _address = socket.recv_fds(sock, 64 * 1024, DESCRIPTORS)
    try:
        if len(data) < _LENGTH.size:
            raise RequestError("a request starts with its length")
        (length,) = _LENGTH.unpack_from(data)
        if length > MAX_REQUEST_BYTES:
            raise RequestError(f"a request of {length} bytes is over the {MAX_REQUEST_BYTES} limit")
        body = bytearray(data[_LENGTH.size :])
        while len(body) < length:
            chunk = sock.recv(min(length - len(body), 1024 * 1024))
            if not chunk:
                raise RequestError("the client closed the connection mid-request")
            body += chunk
        request = json.loads(bytes(body[:length]))
        if not isinstance(request, dict):
            raise RequestError("a request is a JSON object")
    except (RequestError, ValueError, OSError):
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


@dataclass
class _Check:
    pid: int
    conn: socket.socket
    deadline: float
    pidfd: int | None = None  # readable once the child exits: wakes the host's loop to reap it
    reaped: bool = False


class SandboxService:
    """Forks one confined child per check request; see the module docstring for the protocol.

    ``confine(memory_mb)`` is called in the child before it reads anything of the tenant's,
    and returns the names of the layers it applied.
    """

    def __init__(
        self, *, listeners: list[socket.socket], selector: selectors.BaseSelector, confine: Callable[[int], list[str]]
    ) -> None:
        self.selector = selector
        self.confine = confine
        self.checks: dict[int, _Check] = {}
        self.started_checks = 0
        for listener in listeners:
            listener.setblocking(False)
            selector.register(listener, selectors.EVENT_READ, functools.partial(self._accept, listener))

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        conn.settimeout(_REQUEST_TIMEOUT)
        try:
            request, fds = receive_request(conn)
        except (RequestError, ValueError, OSError) as exc:
            logger.warning("sandbox: a client's request failed: %s", exc)
            conn.close()
            return
        try:
            if request.get("op") == "status":
                self._reply(conn, self.status())
                conn.close()
                return
            problem = _problem(request, fds)
            if problem:
                self._reply(conn, {"ok": False, "reason": problem})
                conn.close()
                return
            self._start(conn, request, fds)
        finally:
            for fd in fds:
                os.close(fd)  # the child holds its own copies

    def _start(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        memory_mb = int(request["memory_mb"])
        timeout_s = float(request["timeout_s"])
        sys.stdout.flush()
        sys.stderr.flush()  # nothing of the host's buffered output may reach the check's pipes
        pid = os.fork()
        if pid == 0:
            _run_child(request=request, fds=fds, confine=self.confine, memory_mb=memory_mb, cpu_seconds=math.ceil(timeout_s) + 1)
        self.started_checks += 1
        check = _Check(pid=pid, conn=conn, deadline=time.monotonic() + timeout_s + _GRACE_SECONDS)
        self.checks[pid] = check
        try:
            check.pidfd = os.pidfd_open(pid)
        except OSError:  # a kernel before 5.3: the host's loop still reaps within its select timeout
            pass
        else:
            self.selector.register(check.pidfd, selectors.EVENT_READ, functools.partial(self._child_exited, check))
        try:
            self._reply(conn, {"ok": True, "pid": pid})
        except OSError:
            self._end(check, kill=True)
            return
        conn.setblocking(False)
        self.selector.register(conn, selectors.EVENT_READ, functools.partial(self._client_readable, check))

    def _client_readable(self, check: _Check) -> None:
        """The client sends nothing after its request: readable means it hung up (gave up)."""
        try:
            data = check.conn.recv(1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end(check, kill=True)

    def _child_exited(self, check: _Check) -> None:
        """Nothing to do but stop watching: the host reaps after each wake-up, then calls ``reaped``."""
        self._close_pidfd(check)

    def _close_pidfd(self, check: _Check) -> None:
        if check.pidfd is not None:
            self.selector.unregister(check.pidfd)
            os.close(check.pidfd)
            check.pidfd = None

    def reaped(self, pid: int, status: int) -> bool:
        """Tell the client how the check `pid` ended; False when `pid` is not a check."""
        check = self.checks.get(pid)
        if check is None:
            return False
        check.reaped = True
        try:
            check.conn.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n", socket.MSG_DONTWAIT)
        except OSError:
            pass  # the client gave up already
        self._end(check, kill=False)
        return True

    def kill_overdue(self, now: float) -> None:
        for check in list(self.checks.values()):
            if now > check.deadline and not check.reaped:
                logger.warning("sandbox: check %s outlived its timeout; killing it", check.pid)
                _kill(check.pid)

    def _end(self, check: _Check, *, kill: bool) -> None:
        if kill and not check.reaped:
            _kill(check.pid)  # not reaped yet, so the pid is still this child's
        if check.conn.fileno() != -1:
            try:
                self.selector.unregister(check.conn)
            except (KeyError, ValueError):
                pass
            check.conn.close()
        if check.reaped:
            self._close_pidfd(check)
            self.checks.pop(check.pid, None)
        # else: kept until reaped, so kill_overdue and reaped() still know the pid.

    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "started_checks": self.started_checks,
            "running": sorted(pid for pid, c in self.checks.items() if not c.reaped),
        }

    @staticmethod
    def _reply(conn: socket.socket, message: dict[str, Any]) -> None:
        conn.sendall(json.dumps(message).encode() + b"\n")


def _problem(request: dict[str, Any], fds: list[int]) -> str | None:
    if request.get("op", "check") != "check":
        return f"unknown op {request.get('op')!r}"
    if len(fds) != DESCRIPTORS:
        return f"a check request carries {DESCRIPTORS} descriptors (the model file, the report and stderr pipes), not {len(fds)}"
    if request.get("fmt") not in _FORMATS:
        return f"fmt is one of {', '.join(_FORMATS)}"
    for name in ("memory_mb", "timeout_s"):
        value = request.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10**6:
            return f"{name} is a positive number"
    return None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _run_child(
    *, request: dict[str, Any], fds: list[int], confine: Callable[[int], list[str]], memory_mb: int, cpu_seconds: int
) -> None:
    """The check's whole life, in the forked child; never returns."""
    status = 1
    try:
        model_fd, report_fd, stderr_fd = fds
        # stdin is the model file, stdout and stderr the client's pipes: the subprocess's layout.
        os.dup2(report_fd, 1)
        os.dup2(stderr_fd, 2)
        os.dup2(model_fd, 0)
        # Everything else of the host's goes: listeners, runners' control sockets, other clients.
        os.closerange(3, _MAX_FD)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        confine(memory_mb)
        # SIGXCPU at the soft limit, SIGKILL a second later; a forked child's CPU time starts at 0.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        from .sandbox_child import write_report

        write_report(request=request, model_fd=0)
        status = 0
    except BaseException:  # noqa: BLE001 - the child must end here, never back in the host's loop
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(status)
