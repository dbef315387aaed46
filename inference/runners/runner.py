"""What a runner does: confine itself, then load platform-written artifacts and predict.

A runner is forked by the runner host for one organization. It first confines itself
(``confine``), then serves the client connections the host hands it over its control socket,
one frame at a time, single-threaded:

- ``predict``: rows for a version it holds -> predictions (and probabilities), or
  ``{"need": "artifact"}`` when it does not hold that version's artifact yet;
- ``load``: a version's serving artifact (bytes the upload sandbox wrote, sent by the client,
  which reads model storage; the runner has no storage credentials), checked against its
  sha256 and loaded through the hardened loader again (re-verified: allow-list, dtypes,
  object arrays, tree structures); for a tree ensemble served compiled, also its compiled
  form (an ONNX graph the sandbox wrote and verified), checked against its own sha256 and
  opened by ONNX Runtime with one thread and no spinning (``registry.loaders.compiled``).
  A predict names both sha256s, so a version whose compiled form was turned off or on is
  loaded again.

Models live in an LRU bounded by ``memory_mb`` of artifact bytes. Each request may use
``cpu_seconds`` of CPU: the soft RLIMIT_CPU is moved to "used so far + the allowance" before
each predict, so a runaway model is killed by the kernel (SIGXCPU) and the host restarts the
runner. The runner reports to the host, at most once a second, when it was last used.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import resource
import selectors
import socket
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from inference.runners import wire
from inference.runners.explainers import ExplanationUnavailable, TooManyRowsToExplain

_CLONE_NEWNET = 0x40000000
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# System calls a runner never needs once it serves: making sockets or connecting anywhere,
# running programs, reading or writing other processes, namespaces, mounts, keys, BPF. They
# fail with EPERM; everything else is allowed (a deny-list: an allow-list would break on each
# numeric library's new system call). x86-64 numbers; elsewhere this layer is not applied.
_DENIED_X86_64 = {
    "socket": 41,
    "connect": 42,
    "accept": 43,
    "bind": 49,
    "listen": 50,
    "socketpair": 53,
    "accept4": 288,
    "execve": 59,
    "execveat": 322,
    "kill": 62,
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "chroot": 161,
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "unshare": 272,
    "setns": 308,
    "keyctl": 250,
    "bpf": 321,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "open_by_handle_at": 304,
}
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO_EPERM = 0x00050000 | 1


@dataclass(frozen=True)
class RunnerLimits:
    memory_mb: int  # address space of the whole runner process
    model_cache_mb: int  # artifact bytes held in the runner's LRU
    cpu_seconds: int  # CPU one request may use
    uid: int | None  # the user a runner started by root switches to (per organization)
    max_connections: int = 256


# The largest request the compiled form answers: ONNX Runtime walks every tree for one row at a
# time, scikit-learn one tree for all rows; measured on the 100-tree, 20-feature forest (two
# classes), one-thread ONNX Runtime is 240x faster for one row, 3.8x for 100 and slower past
# about 500 rows (bench/compiled_bench.py), so larger requests (batch chunks) go to scikit-learn.
COMPILED_MAX_ROWS = 256


@dataclass
class _Loaded:
    sha256: str
    estimator: Any
    has_proba: bool
    size: int
    compiled_sha256: str = ""
    compiled: Any = None  # registry.loaders.compiled.CompiledPredictor
    explainers: dict = field(default_factory=dict)  # what inference.runners.explainers keeps for this model


def confine(*, limits: RunnerLimits) -> list[str]:
    """Apply every confinement layer this kernel and these privileges allow; return their names."""
    layers = []
    libc = ctypes.CDLL(None, use_errno=True)
    if os.geteuid() == 0 and libc.unshare(_CLONE_NEWNET) == 0:
        layers.append("network namespace (no interfaces)")
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * 1024 * 1024,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_connections + 16,) * 2)
    layers.append(f"rlimits (address space {limits.memory_mb} MiB, no core files, no file writes)")
    if os.geteuid() == 0 and limits.uid is not None:
        os.setgroups([])
        os.setresgid(limits.uid, limits.uid, limits.uid)
        os.setresuid(limits.uid, limits.uid, limits.uid)
        layers.append(f"own user id {limits.uid}")
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        layers.append("no new privileges")
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
        layers.append("not dumpable (no ptrace, no /proc/<pid>/mem by its peers)")
    if _deny_system_calls(libc):
        layers.append("seccomp (no sockets, exec, ptrace, kill, namespaces or mounts)")
    return layers


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_program() -> list[tuple[int, int, int, int]]:
    """The classic-BPF filter: another architecture, an x32 call or a denied call -> EPERM."""
    load_word, jump_eq, jump_ge, ret = 0x20, 0x15, 0x35, 0x06
    checks = [(jump_ge, _X32_SYSCALL_BIT), *((jump_eq, number) for number in sorted(_DENIED_X86_64.values()))]
    program = [
        (load_word, 0, 0, 4),
        (jump_eq, 1, 0, _AUDIT_ARCH_X86_64),
        (ret, 0, 0, _SECCOMP_RET_ERRNO_EPERM),
        (load_word, 0, 0, 0),
    ]
    deny = len(program) + len(checks) + 1  # after the checks and the allow
    for code, value in checks:
        program.append((code, deny - (len(program) + 1), 0, value))  # a match jumps to the deny
    program += [(ret, 0, 0, _SECCOMP_RET_ALLOW), (ret, 0, 0, _SECCOMP_RET_ERRNO_EPERM)]
    return program


def _deny_system_calls(libc) -> bool:
    import platform

    if platform.machine() != "x86_64":
        return False
    program = seccomp_program()
    filters = (_SockFilter * len(program))(*(_SockFilter(*entry) for entry in program))
    prog = _SockFprog(len(program), filters)
    return libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) == 0


class Runner:
    def __init__(self, *, control: socket.socket, org_id: int, limits: RunnerLimits, layers: list[str]) -> None:
        self.control = control
        self.org_id = org_id
        self.limits = limits
        self.layers = layers
        self.models: OrderedDict[int, _Loaded] = OrderedDict()
        self.selector = selectors.DefaultSelector()
        self.last_used = time.monotonic()
        self.last_report = 0.0

    def serve_forever(self) -> None:
        # scikit-learn's joblib wrapper replays every warning filter around each tree of a
        # forest: one filter keeps a prediction cheap, and still shows each warning once.
        warnings.resetwarnings()
        warnings.simplefilter("default")
        self.selector.register(self.control, selectors.EVENT_READ, None)
        while True:
            for key, _ in self.selector.select(timeout=1.0):
                if key.fileobj is self.control:
                    self._accept_from_host()
                else:
                    self._serve_one(key.fileobj)
            self._report()

    def _accept_from_host(self) -> None:
        message, fds, _flags, _address = socket.recv_fds(self.control, 256, 16)
        if not message:
            os._exit(0)  # the host is gone: so is every client it could send
        for fd in fds:
            conn = socket.socket(fileno=fd)
            conn.setblocking(True)
            conn.settimeout(30.0)  # a client that stalls mid-frame is dropped, not waited for
            try:
                wire.send(conn, {"ok": True, "runner": os.getpid(), "org": self.org_id, "layers": self.layers})
            except OSError:
                conn.close()
                continue
            self.selector.register(conn, selectors.EVENT_READ, None)

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            header, buffers = wire.receive(conn)
        except (wire.WireError, OSError):
            self.selector.unregister(conn)
            conn.close()
            return
        self.last_used = time.monotonic()
        op = header.get("op")
        if op == "predict":
            reply, out = self.predict(header, buffers)
        elif op == "load":
            reply, out = self.load(header, buffers), []
        else:
            reply, out = {"ok": False, "error": {"kind": "protocol", "message": f"unknown op {op!r}"}}, []
        try:
            wire.send(conn, reply, out)
        except OSError:
            self.selector.unregister(conn)
            conn.close()

    def predict(self, header: dict, buffers: list) -> tuple[dict, list[bytes]]:
        import sklearn

        loaded = self.models.get(header.get("v"))
        if loaded is None or loaded.sha256 != header.get("sha") or loaded.compiled_sha256 != (header.get("c") or ""):
            return {"ok": False, "need": "artifact"}, []
        self.models.move_to_end(header["v"])
        out: list[bytes] = []
        try:
            x = wire.decode_input(header["x"], buffers)
            want_proba = bool(header.get("proba")) and loaded.has_proba
            started = time.perf_counter()
            self._allow_cpu(self.limits.cpu_seconds)
            answer = None
            if loaded.compiled is not None and len(x) <= COMPILED_MAX_ROWS:
                answer = loaded.compiled.predict(x, want_proba=want_proba)  # None: rows it does not take
            runtime = "sklearn" if answer is None else "onnx"
            if answer is None:
                with sklearn.config_context(assume_finite=bool(header.get("finite"))):
                    predictions = loaded.estimator.predict(x)
                    probabilities = loaded.estimator.predict_proba(x) if want_proba else None
            else:
                predictions, probabilities = answer
            explanation = None
            if header.get("explain"):
                with sklearn.config_context(assume_finite=bool(header.get("finite"))):
                    explanation = self._explain(loaded, x, predictions, header["explain"], buffers)
            seconds = time.perf_counter() - started
            reply = {
                "ok": True,
                "runtime": runtime,
                "p": wire.encode_array(predictions, out),
                "q": wire.encode_array(probabilities, out) if probabilities is not None else None,
                "seconds": seconds,
            }
            if explanation is not None:
                reply["e"] = {
                    "method": explanation["method"],
                    "output": explanation["output"],
                    "values": wire.encode_array(explanation["values"], out),
                    "base": wire.encode_array(explanation["base"], out),
                }
            return reply, out
        except MemoryError:
            return {
                "ok": False,
                "error": {"kind": "memory", "message": f"the model needed more than the runner's {self.limits.memory_mb} MiB"},
            }, []
        except ExplanationUnavailable as exc:
            return {"ok": False, "error": {"kind": "explain", "message": str(exc)[:2000]}}, []
        except TooManyRowsToExplain as exc:
            return {"ok": False, "error": {"kind": "explain_rows", "message": str(exc)[:2000]}}, []
        except wire.WireError as exc:
            return {"ok": False, "error": {"kind": "protocol", "message": str(exc)}}, []
        except Exception as exc:  # the model's own code failed on these rows: its message is the tenant's to read
            return {"ok": False, "error": {"kind": "predict", "message": f"{type(exc).__name__}: {exc}"[:2000]}}, []

    @staticmethod
    def _explain(loaded: _Loaded, x: Any, predictions: Any, request: dict, buffers: list) -> dict:
        """Contributions for ``x`` (inference.runners.explainers), with the reference data the web sent."""
        from inference.runners.explainers import explain

        mean = wire.decode_array(request["mean"], buffers) if request.get("mean") else None
        background = wire.decode_input(request["background"], buffers) if request.get("background") else None
        return explain(
            estimator=loaded.estimator,
            kept=loaded.explainers,
            x=x,
            predictions=np.asarray(predictions),
            mean=mean,
            background=background,
            sampling_max_rows=int(request.get("sampling_max_rows") or 1),
        )

    def load(self, header: dict, buffers: list) -> dict:
        from registry.loaders.serving import load_serving_artifact

        version_id, sha256 = header.get("v"), header.get("sha")
        if not isinstance(version_id, int) or not buffers:
            return {"ok": False, "error": {"kind": "protocol", "message": "a load names a version and carries its artifact"}}
        data = bytes(buffers[0])
        if hashlib.sha256(data).hexdigest() != sha256:
            return {"ok": False, "error": {"kind": "load", "message": "the artifact does not match its sha256"}}
        compiled_sha256 = header.get("c") or ""
        compiled_data = bytes(buffers[1]) if len(buffers) > 1 else b""
        if compiled_sha256 and hashlib.sha256(compiled_data).hexdigest() != compiled_sha256:
            return {"ok": False, "error": {"kind": "load", "message": "the compiled artifact does not match its sha256"}}
        started = time.perf_counter()
        compiled = None
        try:
            self._allow_cpu(max(self.limits.cpu_seconds, 60))
            estimator = load_serving_artifact(data=data)
            if compiled_sha256:
                from registry.loaders.compiled import CompiledPredictor

                compiled = CompiledPredictor(data=compiled_data, estimator=estimator)
        except MemoryError:
            return {
                "ok": False,
                "error": {"kind": "memory", "message": f"loading needed more than the runner's {self.limits.memory_mb} MiB"},
            }
        except Exception as exc:  # refused or unreadable: the client says so, the runner lives on
            return {"ok": False, "error": {"kind": "load", "message": f"{type(exc).__name__}: {exc}"[:2000]}}
        self.models[version_id] = _Loaded(
            sha256=sha256,
            estimator=estimator,
            has_proba=hasattr(estimator, "predict_proba"),
            size=len(data) + len(compiled_data),
            compiled_sha256=compiled_sha256,
            compiled=compiled,
        )
        self.models.move_to_end(version_id)
        budget = self.limits.model_cache_mb * 1024 * 1024
        while len(self.models) > 1 and sum(m.size for m in self.models.values()) > budget:
            self.models.popitem(last=False)
        return {"ok": True, "seconds": time.perf_counter() - started}

    @staticmethod
    def _allow_cpu(seconds: int) -> None:
        """Let this request use `seconds` more CPU; past it the kernel stops the runner."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime) + seconds
        _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))

    def _report(self) -> None:
        now = time.monotonic()
        if now - self.last_report < 1.0:
            return
        self.last_report = now
        status = {"idle": now - self.last_used, "models": len(self.models), "connections": len(self.selector.get_map()) - 1}
        try:
            self.control.send(orjson.dumps(status), socket.MSG_DONTWAIT)
        except (BlockingIOError, OSError):
            pass  # the host reads these when it can; a missed one changes nothing


def run(*, control: socket.socket, org_id: int, limits: RunnerLimits) -> None:
    """The runner's whole life, in the child the host forked; never returns."""
    try:
        layers = confine(limits=limits)
        Runner(control=control, org_id=org_id, limits=limits, layers=layers).serve_forever()
    finally:
        os._exit(1)
