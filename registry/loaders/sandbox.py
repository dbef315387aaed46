"""The upload-time model check, run in a child process a runaway model cannot take down with it.

``inspect_artifact`` starts ``python -m registry.loaders.sandbox_child`` with an address
space limit (RLIMIT_AS), a CPU-time limit (RLIMIT_CPU), no core files and no file
writes (RLIMIT_FSIZE 0), a minimal environment with one BLAS thread, and a wall-clock
timeout; the child loads the file through the safe loader, describes it, predicts on its
input example or on synthesized rows, and reports JSON followed by the platform-owned
serving artifact (``serving.py``). The parent turns each outcome into the platform's errors.

The limits are set in ``preexec_fn``, which only calls ``setrlimit`` (no imports, no
locks), the part of ``preexec_fn`` that is safe in a threaded server.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
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

__all__ = ["inspect_artifact", "load_model", "detect_format"]


def inspect_artifact(
    path: str,
    *,
    fmt: str,
    input_example: list[list[Any] | dict[str, Any]] | None,
    timeout_s: float,
    memory_mb: int,
) -> dict[str, Any]:
    """Load, describe and smoke-test a model file in a limited child; return the child's report.

    The report has ``description`` (``describe.ModelDescription`` as a dict), ``sample``
    (the prediction on the input example, or on one synthesized row: ``source``
    "synthesized", a failure there noted with ``ok`` False), ``serving_artifact`` (bytes:
    the checked estimator, pickled by the platform; read it with
    ``serving.load_serving_artifact``), ``linear_spec`` (a dict for plain linear models,
    else None; see ``serving.linear_spec_for``), ``load_seconds``, ``predict_seconds`` and
    ``artifact_seconds``. ``timeout_s`` covers
    the whole child, including about a second of interpreter and library start-up;
    ``memory_mb`` is its whole address space (the libraries alone take about 600 MiB).
    Raises UnsafeArtifact with the refused globals, InvalidArtifact for a timeout, the
    memory limit, or a failed prediction on the model's own input example (with its
    message), PayloadTooLarge for a zip bomb.
    """
    if fmt not in FORMATS:
        raise InvalidArtifact(f"Unknown model format {fmt!r}; expected one of {', '.join(FORMATS)}.")
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
        if report.pop("serving_artifact_bytes", None) != len(artifact) or returncode != 0:
            raise InvalidArtifact(f"the model check stopped unexpectedly (exit status {returncode}) while writing its result")
        report["serving_artifact"] = artifact
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
