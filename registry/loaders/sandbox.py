"""The upload-time model check, run in a child process a runaway model cannot take down with it.

``inspect_artifact`` asks the check's fork server first (``sandbox_server``: a child forked
from the runner host, which has the libraries imported already, at MODEL_CHECK_SOCKET), and
when none answers there, starts ``python -m registry.loaders.sandbox_child`` with an address
space limit (RLIMIT_AS), a CPU-time limit (RLIMIT_CPU), no core files and no file
writes (RLIMIT_FSIZE 0), a minimal environment with one BLAS thread, and a wall-clock
timeout; the child loads the file through the safe loader, describes it, predicts on its
input example or on synthesized rows, and reports JSON followed by the platform-owned
serving artifact (``serving.py``). The parent turns each outcome into the platform's errors.

The limits are set in ``preexec_fn``, which only calls ``setrlimit`` (no imports, no
locks), the part of ``preexec_fn`` that is safe in a threaded server.

Both paths give the child the same limits and read the same output (a JSON report, a
newline, the artifact's bytes; stderr; an exit status), and ``_report_or_raise`` turns
either into the same result or error. On the fork server's path the web opens the estimator
file (for an MLflow folder, the file its MLmodel names) and hands over the open descriptor,
so the child, running as a user of its own, reads nothing else of this machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from platform_site.errors import InvalidArtifact, PayloadTooLarge, UnsafeArtifact
from platform_site.serve import ONE_NATIVE_THREAD

from .formats import FORMATS, detect_format, load_model

_REPO_ROOT = Path(__file__).resolve().parents[2]
_CHILD_COMMAND = (sys.executable, "-s", "-B", "-m", "registry.loaders.sandbox_child")
# The child's environment is built here, not inherited: nothing of the web process's
# configuration (secrets, DATABASE_URL, DJANGO_SETTINGS_MODULE) reaches tenant-controlled data.
_CHILD_ENV = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONNOUSERSITE": "1",
    "PYTHONIOENCODING": "utf-8",
    # Each BLAS thread reserves address space; one keeps RLIMIT_AS meaningful.
    **ONE_NATIVE_THREAD,
}
_REFUSALS = {"UnsafeArtifact": UnsafeArtifact, "InvalidArtifact": InvalidArtifact, "PayloadTooLarge": PayloadTooLarge}
# How running out of address space shows when it is not a clean MemoryError.
_MEMORY_MARKERS = (
    "MemoryError",
    "Cannot allocate memory",
    "failed to map segment",
    "std::bad_alloc",
    "Unable to allocate",
    "out of memory",
)
_STDERR_TAIL = 2000
# How long the fork server may take to say it started the check before the subprocess is used.
_FORK_SERVER_ANSWER_SECONDS = 2.0
_READ_CHUNK = 1024 * 1024

logger = logging.getLogger(__name__)

__all__ = ["inspect_artifact", "load_model", "detect_format"]


def inspect_artifact(
    path: str,
    *,
    fmt: str,
    input_example: list[list[Any] | dict[str, Any]] | None,
    timeout_s: float,
    memory_mb: int,
    check_socket: str = "",
) -> dict[str, Any]:
    """Load, describe and smoke-test a model file in a limited child; return the child's report.

        The report has ``description`` (``describe.ModelDescription`` as a dict), ``sample``
        (the prediction on the input example, or on one synthesized row: ``source``
        "synthesized", a failure there noted with ``ok`` False), ``serving_artifact`` (bytes:
        the checked estimator, pickled by the platform; read it with
        ``serving.load_serving_artifact``), ``compiled_artifact`` (bytes of the verified compiled form
    of a tree ensemble, or None) and ``compiled`` (``reason``: why it is or is not compiled, and the
    verification's ``figures``; see ``compiled.compile_estimator``), ``linear_spec`` (a dict for plain linear models,
        else None; see ``serving.linear_spec_for``), ``load_seconds``, ``predict_seconds`` and
        ``artifact_seconds``. ``timeout_s`` covers
        the whole child, including about a second of interpreter and library start-up;
        ``memory_mb`` is its whole address space (the libraries alone take about 600 MiB).
        Raises UnsafeArtifact with the refused globals, InvalidArtifact for a timeout, the
        memory limit, or a failed prediction on the model's own input example (with its
        message), PayloadTooLarge for a zip bomb.

        ``check_socket`` is the fork server's Unix socket (settings.MODEL_CHECK_SOCKET; empty:
        always the subprocess); a fork server that is not there or does not answer within two
        seconds means the subprocess, with the same limits and the same outcome.
    """
    if fmt not in FORMATS:
        raise InvalidArtifact(f"Unknown model format {fmt!r}; expected one of {', '.join(FORMATS)}.")
    if check_socket:
        outcome = _run_on_fork_server(
            check_socket, path=path, fmt=fmt, input_example=input_example, timeout_s=timeout_s, memory_mb=memory_mb
        )
        if outcome is not None:
            return _report_or_raise(*outcome, timeout_s=timeout_s, memory_mb=memory_mb)
    request = json.dumps({"path": str(Path(path).resolve()), "fmt": fmt, "input_example": input_example})
    process = subprocess.Popen(
        _CHILD_COMMAND,
        cwd=_REPO_ROOT,
        env=_CHILD_ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_limits(memory_bytes=memory_mb * 1024 * 1024, cpu_seconds=math.ceil(timeout_s) + 1),
        start_new_session=True,  # its own process group, so a timeout kills everything it started
    )
    try:
        stdout, stderr = process.communicate(request.encode(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it may have exited just now
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise InvalidArtifact(f"loading the model took longer than {timeout_s:g} s", limit="timeout_s") from None
    return _report_or_raise(process.returncode, stdout, stderr, timeout_s=timeout_s, memory_mb=memory_mb)


def _run_on_fork_server(
    check_socket: str, *, path: str, fmt: str, input_example: Any, timeout_s: float, memory_mb: int
) -> tuple[int | None, bytes, bytes] | None:
    """The check's (exit status, stdout, stderr) from a child of the fork server, or None when
    no fork server answered (the caller then starts the subprocess).

    Raises InvalidArtifact when the check outlives ``timeout_s``: closing the connection is what
    tells the fork server to kill the child.
    """
    started = time.monotonic()
    file_path, file_fmt, saved_version = _estimator_file(path, fmt=fmt)
    request = {
        "op": "check",
        "fmt": file_fmt,
        "saved_sklearn_version": saved_version,
        "input_example": input_example,
        "timeout_s": timeout_s,
        "memory_mb": memory_mb,
    }
    from .sandbox_server import send_request

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pipes: list[int] = []
    try:
        conn.settimeout(_FORK_SERVER_ANSWER_SECONDS)
        try:
            conn.connect(check_socket)
        except OSError as exc:  # no fork server here: the subprocess it is
            logger.info("model check: no fork server at %s (%s); starting a subprocess", check_socket, exc)
            return None
        report_read, report_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        pipes += [report_read, stderr_read]
        model_fd = os.open(file_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            send_request(conn, request, [model_fd, report_write, stderr_write])
        except OSError as exc:
            logger.warning("model check: the fork server at %s took no request (%s); starting a subprocess", check_socket, exc)
            return None
        finally:
            for fd in (model_fd, report_write, stderr_write):
                os.close(fd)  # the child holds the copies; EOF on the pipes means it is done
        answer = _read_line(conn, deadline=time.monotonic() + _FORK_SERVER_ANSWER_SECONDS)
        if not answer.get("ok"):
            logger.warning(
                "model check: the fork server at %s did not start the check (%s); starting a subprocess",
                check_socket,
                answer.get("reason"),
            )
            return None
        outcome = _collect(conn, report_read=report_read, stderr_read=stderr_read, deadline=started + timeout_s)
        if outcome is None:
            raise InvalidArtifact(f"loading the model took longer than {timeout_s:g} s", limit="timeout_s")
        return outcome
    finally:
        conn.close()  # before the child ended: the fork server kills it
        for fd in pipes:
            os.close(fd)


def _estimator_file(path: str, *, fmt: str) -> tuple[str, str, str | None]:
    """(the estimator file, its format, the scikit-learn version its MLmodel names) for `path`.

    An MLflow folder's MLmodel was already read by the web when the zip was unpacked
    (``extract_mlflow_archive``); this reads it again to find the one file the child needs.
    """
    if fmt != "mlflow":
        return path, fmt, None
    from .archive import read_mlflow_model

    model = read_mlflow_model(folder=path)
    return str(model.model_path), model.serialization_format, model.sklearn_version


def _read_line(conn: socket.socket, *, deadline: float) -> dict[str, Any]:
    """One JSON line from the fork server, or {} when it closes or the deadline passes first."""
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return {}
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(1)  # byte by byte: what follows the line is not ours to take
        except OSError:
            return {}
        if not chunk:
            return {}
        line += chunk
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _collect(
    conn: socket.socket, *, report_read: int, stderr_read: int, deadline: float
) -> tuple[int | None, bytes, bytes] | None:
    """Read both pipes to their end and the exit status; None when the deadline passes first.

    An exit status of None: the fork server went away before saying it (the report, if whole,
    still counts for nothing: ``_report_or_raise`` wants a clean exit).
    """
    chunks: dict[int, list[bytes]] = {report_read: [], stderr_read: []}
    returncode: int | None = None
    status_pending = True
    with selectors.DefaultSelector() as selector:
        selector.register(report_read, selectors.EVENT_READ)
        selector.register(stderr_read, selectors.EVENT_READ)
        selector.register(conn, selectors.EVENT_READ)
        while len(selector.get_map()) > (1 if status_pending else 0):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            for key, _ in selector.select(timeout=remaining):
                if key.fileobj is conn:
                    selector.unregister(conn)
                    status_pending = False
                    returncode = _read_line(conn, deadline=deadline).get("returncode")
                    continue
                data = os.read(key.fd, _READ_CHUNK)
                if data:
                    chunks[key.fd].append(data)
                else:
                    selector.unregister(key.fd)
        if status_pending:  # the pipes are done: the child exited, its status follows at once
            returncode = _read_line(conn, deadline=deadline).get("returncode")
    if not isinstance(returncode, int) or isinstance(returncode, bool):
        returncode = None
    return returncode, b"".join(chunks[report_read]), b"".join(chunks[stderr_read])


def _limits(*, memory_bytes: int, cpu_seconds: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        # SIGXCPU at the soft limit, SIGKILL a second later.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    return apply


def _report_or_raise(returncode: int, stdout: bytes, stderr: bytes, *, timeout_s: float, memory_mb: int) -> dict[str, Any]:
    memory_message = f"loading the model needed more than the {memory_mb} MiB memory limit"
    head, _, artifact = stdout.partition(b"\n")
    try:
        report = json.loads(head)
    except ValueError:
        report = None
    if not isinstance(report, dict):
        if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            raise InvalidArtifact(f"loading the model took longer than {timeout_s:g} s", limit="timeout_s")
        tail = stderr.decode("utf-8", "replace")[-_STDERR_TAIL:]
        if any(marker in tail for marker in _MEMORY_MARKERS):
            raise InvalidArtifact(memory_message, limit="memory_mb")
        last_line = tail.strip().splitlines()[-1] if tail.strip() else "no output"
        raise InvalidArtifact(f"the model check stopped unexpectedly (exit status {returncode}): {last_line}")
    if report.get("ok"):
        report.pop("ok")
        serving_bytes, compiled_bytes = report.pop("serving_artifact_bytes", None), report.pop("compiled_artifact_bytes", None)
        if (
            not isinstance(serving_bytes, int)
            or not isinstance(compiled_bytes, int)
            or serving_bytes + compiled_bytes != len(artifact)
            or returncode != 0
        ):
            raise InvalidArtifact(f"the model check stopped unexpectedly (exit status {returncode}) while writing its result")
        report["serving_artifact"] = artifact[:serving_bytes]
        report["compiled_artifact"] = artifact[serving_bytes:] or None
        return report
    error = report.get("error") or {}
    kind = error.get("kind")
    if kind == "memory":
        raise InvalidArtifact(memory_message, limit="memory_mb")
    if kind == "predict":
        raise InvalidArtifact(f"the model failed to predict on its input example: {error.get('message')}")
    if kind == "refused":
        error_class = _REFUSALS.get(error.get("class"), InvalidArtifact)
        if error_class is UnsafeArtifact:
            raise UnsafeArtifact(error.get("detail"), refused_globals=error.get("refused_globals") or [])
        raise error_class(error.get("detail"))
    message = str(error.get("message"))
    if any(marker in message for marker in _MEMORY_MARKERS):
        raise InvalidArtifact(memory_message, limit="memory_mb")
    raise InvalidArtifact(f"the model could not be loaded: {message}")
