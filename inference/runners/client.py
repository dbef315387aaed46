"""The web's and the worker's side of the runners: send validated rows, get predictions back.

Each thread keeps one connection per organization, opened through the runner host that
serves that organization (RUNNER_ADDRESSES, chosen by rendezvous hash of the organization
id, so every web process sends an organization to the same host and adding a host moves
only 1/n of them). The host hands the connection to a runner of that organization; from
then on it is one hop. A version the runner does not hold yet is sent to it once (its
platform-written serving artifact, read from model storage here: runners have no storage
credentials).

What can go wrong, and what the caller sees:
- the host is down, or backing off after crashes: RunnerUnavailable, 503 with Retry-After;
- the runner dies during the request (crash, CPU limit): RunnerUnavailable, and the version's
  crash count goes up (three crashes mark it failing on its page and in the API);
- the request takes longer than RUNNER_REQUEST_TIMEOUT_SECONDS: the organization's runners are
  stopped and restarted, RunnerUnavailable;
- the model's own code raises on the rows: ModelFailed (500, with the model's message).
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import select
import socket
import threading
import time
from typing import Any

import numpy as np
from django.conf import settings

from inference.runners import wire
from platform_site.errors import ExplanationUnavailable, ModelhostError, PayloadTooLarge, ServiceUnavailable
from platform_site.metrics import MODEL_LOAD_SECONDS, RUNNER_PREDICTIONS
from platform_site.on_loop import leave_if_on_loop

logger = logging.getLogger(__name__)


class RunnerUnavailable(ServiceUnavailable):
    code, title = "runner_unavailable", "The model's runner is unavailable"

    def __init__(self, detail: str, *, retry_after: float = 1.0) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class ModelFailed(ModelhostError):
    status, code, title = 500, "model_error", "The model failed to predict"


_local = threading.local()


def _connections() -> dict[int, socket.socket]:
    pool = getattr(_local, "connections", None)
    if pool is None:
        pool = _local.connections = {}
    return pool


def address_for(org_id: int) -> str:
    """The runner host an organization's requests go to (rendezvous hashing)."""
    addresses = settings.RUNNER_ADDRESSES
    if len(addresses) == 1:
        return addresses[0]
    return max(addresses, key=lambda a: hashlib.blake2b(f"{org_id}|{a}".encode(), digest_size=8).digest())


def _dial(address: str, timeout: float) -> socket.socket:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address[len("unix:") :])
        return sock
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def ask_host(address: str, hello: dict, *, timeout: float | None = None) -> dict:
    """One request to a runner host (status, stop); the host answers and closes."""
    sock = _dial(address, settings.RUNNER_CONNECT_TIMEOUT_SECONDS if timeout is None else timeout)
    try:
        wire.send(sock, hello)
        reply, _ = wire.receive(sock)
        return reply
    finally:
        sock.close()


def host_metric_samples() -> list[tuple[str, list[str], float]]:
    """Prometheus samples ``(name, [host], value)`` of every runner host, asked at scrape time.

    A host that does not answer within a second is ``modelhost_runner_host_up 0`` and
    nothing else; its runners' figures are unknown, not zero.
    """
    samples: list[tuple[str, list[str], float]] = []
    for address in settings.RUNNER_ADDRESSES:
        try:
            status = ask_host(address, {"op": "status"}, timeout=1.0)
            runners = status["runners"]
            figures = [
                ("modelhost_runners", float(len(runners))),
                ("modelhost_models_loaded", float(sum(int(r.get("models", 0)) for r in runners))),
                ("modelhost_runner_memory_bytes", sum(float(r.get("rss_mb", 0.0)) for r in runners) * 1024 * 1024),
                ("modelhost_runner_organizations", float(len({r.get("org") for r in runners}))),
                ("modelhost_runners_started", float(status["started_runners"])),
                ("modelhost_runners_crashed", float(status["crashed_runners"])),
                ("modelhost_runner_organizations_backing_off", float(len(status.get("backoff") or {}))),
            ]
        except (OSError, wire.WireError, KeyError, TypeError, ValueError):
            samples.append(("modelhost_runner_host_up", [address], 0.0))
            continue
        samples.append(("modelhost_runner_host_up", [address], 1.0))
        samples.extend((name, [address], value) for name, value in figures)
    return samples


def _open(org_id: int, *, runner: int | None = None) -> socket.socket:
    address = address_for(org_id)
    try:
        sock = _dial(address, settings.RUNNER_CONNECT_TIMEOUT_SECONDS)
    except OSError as exc:
        raise RunnerUnavailable(
            f"No runner host answers at {address} ({exc.strerror or exc}); start one with `python -m inference.runners.host`."
        ) from None
    try:
        wire.send(sock, {"org": org_id} if runner is None else {"org": org_id, "runner": runner})
        reply, _ = wire.receive(sock)
    except (OSError, wire.WireError) as exc:
        sock.close()
        raise RunnerUnavailable(f"The runner host at {address} did not hand over a runner: {exc}") from None
    if not reply.get("ok"):
        sock.close()
        raise RunnerUnavailable(
            f"The organization's runner is unavailable: {reply.get('reason')}.",
            retry_after=float(reply.get("retry_after") or 1.0),
        )
    return sock


def _is_open(sock: socket.socket) -> bool:
    """False when the runner closed (or died): an idle connection that is readable holds EOF.

    A poll with no wait; between requests a runner sends nothing, so anything readable means
    the connection is over (or out of step, which is as bad).
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
    return not poller.poll(0)


def _connection(org_id: int) -> socket.socket:
    pool = _connections()
    sock = pool.get(org_id)
    if sock is not None and not _is_open(sock):
        del pool[org_id]
        sock.close()
        sock = None
    if sock is None:
        sock = pool[org_id] = _open(org_id)
    return sock


def _drop(org_id: int) -> None:
    sock = _connections().pop(org_id, None)
    if sock is not None:
        sock.close()


def close_all() -> None:
    """Close this thread's runner connections (tests; a process about to fork)."""
    for org_id in list(_connections()):
        _drop(org_id)


def _exchange(org_id: int, header: dict, buffers: list[bytes], *, timeout: float, version_id: int) -> tuple[dict, list]:
    leave_if_on_loop()  # never wait on a runner on the web's event loop (platform_site.on_loop)
    sock = _connection(org_id)
    sock.settimeout(timeout)
    try:
        wire.send(sock, header, buffers)
        return wire.receive(sock, max_bytes=settings.RUNNER_MAX_REPLY_BYTES)
    except TimeoutError:
        _drop(org_id)
        _stop_runners(org_id)
        raise RunnerUnavailable(f"The model took longer than {timeout:g} s; its runner was restarted.") from None
    except (OSError, wire.WireError) as exc:
        _drop(org_id)
        _note_crash(version_id)
        raise RunnerUnavailable(f"The organization's runner stopped while predicting ({exc}); it is being restarted.") from None


def _stop_runners(org_id: int) -> None:
    try:
        ask_host(address_for(org_id), {"op": "stop", "org": org_id})
    except (OSError, wire.WireError):
        pass  # the host restarts what died; nothing more to do here


def _note_crash(version_id: int) -> None:
    from registry.services import note_runner_crash

    note_runner_crash(version_id=version_id)


def _failure(reply: dict, *, version_id: int) -> ModelhostError:
    error = reply.get("error") or {}
    message = str(error.get("message") or "no message")
    if error.get("kind") == "predict":
        # The model's own message may quote the rows: it goes to the log under a request id,
        # as any unexpected error does, and the caller is told the exception's type.
        request_id = "req_" + secrets.token_hex(8)
        logger.warning("version %s raised while predicting (request id %s): %s", version_id, request_id, message)
        kind = message.split(":", 1)[0].strip()[:80] or "an error"
        return ModelFailed(
            f"The model raised {kind} on these rows; quote request id {request_id} to find its message in the platform's log.",
            headers={"X-Request-Id": request_id},
            request_id=request_id,
        )
    if error.get("kind") == "memory":
        return ModelFailed(message)
    if error.get("kind") == "explain":
        return ExplanationUnavailable(message)
    if error.get("kind") == "explain_rows":
        return PayloadTooLarge(message, errors=[{"field": "inputs", "message": message}])
    return RunnerUnavailable(f"The runner could not serve this version: {message}")


def load(*, org_id: int, version_id: int, compiled_sha256: str = "") -> str:
    """Send a version's serving artifact (and, when `compiled_sha256` names one, its compiled
    form) to its organization's runner; return the serving artifact's sha256."""
    header, buffers, sha256 = _load_message(version_id=version_id, compiled_sha256=compiled_sha256)
    started = time.perf_counter()
    reply, _ = _exchange(org_id, header, buffers, timeout=settings.RUNNER_LOAD_TIMEOUT_SECONDS, version_id=version_id)
    if not reply.get("ok"):
        raise _failure(reply, version_id=version_id)
    MODEL_LOAD_SECONDS.observe(time.perf_counter() - started)
    return sha256


def _load_message(*, version_id: int, compiled_sha256: str) -> tuple[dict, list[bytes], str]:
    """The `load` request for a version: header, buffers, and the serving artifact's sha256."""
    from registry.artifacts import read_compiled_artifact, read_serving_artifact

    data, sha256 = read_serving_artifact(version_id=version_id)
    header = {"op": "load", "v": version_id, "sha": sha256, "c": ""}
    buffers = [data]
    if compiled_sha256:
        compiled, found = read_compiled_artifact(version_id=version_id)
        if found != compiled_sha256:
            raise RunnerUnavailable("The version's compiled artifact in storage does not match its recorded sha256.")
        header["c"] = compiled_sha256
        buffers.append(compiled)
    return header, buffers, sha256


def predict(
    *, org_id: int, version_id: int, serving_sha256: str, x: Any, want_proba: bool, finite: bool, compiled_sha256: str = ""
) -> tuple[np.ndarray, np.ndarray | None]:
    """The predictions (and probabilities when asked and available) of a version on `x`; by
    its compiled form when `compiled_sha256` names one and the rows suit it."""
    predictions, probabilities, _ = _predict(
        org_id=org_id,
        version_id=version_id,
        serving_sha256=serving_sha256,
        x=x,
        want_proba=want_proba,
        finite=finite,
        compiled_sha256=compiled_sha256,
    )
    return predictions, probabilities


def predict_explained(
    *,
    org_id: int,
    version_id: int,
    serving_sha256: str,
    x: Any,
    want_proba: bool,
    finite: bool,
    mean: np.ndarray | None,
    background: Any,
    sampling_max_rows: int,
    compiled_sha256: str = "",
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """As `predict`, with each row's feature contributions (inference.runners.explainers):
    ``{"method", "output", "values": (rows, features), "base": (rows,)}``.

    `mean` (the reference data's column means) and `background` (a sample of its rows) are
    what the linear and sampling explainers compare with; None when the version has none.
    Raises ExplanationUnavailable (422) or PayloadTooLarge (413) as the runner says.
    """
    buffers: list[bytes] = []
    request = {
        "mean": wire.encode_array(mean, buffers) if mean is not None else None,
        "background": wire.encode_input(background, buffers) if background is not None else None,
        "sampling_max_rows": sampling_max_rows,
    }
    predictions, probabilities, explanation = _predict(
        org_id=org_id,
        version_id=version_id,
        serving_sha256=serving_sha256,
        x=x,
        want_proba=want_proba,
        finite=finite,
        compiled_sha256=compiled_sha256,
        explain=(request, buffers),
    )
    if explanation is None:
        raise RunnerUnavailable("The runner answered a prediction without the explanation asked for.")
    return predictions, probabilities, _checked_explanation(explanation, rows=len(predictions), width=x.shape[1])


def _checked_explanation(explanation: dict, *, rows: int, width: int) -> dict:
    """The runner's explanation, refused unless it has the promised shapes (a runner is not trusted)."""
    values, base = explanation["values"], explanation["base"]
    if (
        not isinstance(values, np.ndarray)
        or not isinstance(base, np.ndarray)
        or values.dtype != np.float64
        or base.dtype != np.float64
        or values.shape != (rows, width)
        or base.shape != (rows,)
        or not isinstance(explanation.get("method"), str)
        or not isinstance(explanation.get("output"), str)
    ):
        raise RunnerUnavailable("The runner answered an explanation of the wrong shape.")
    return {"method": explanation["method"][:40], "output": explanation["output"][:200], "values": values, "base": base}


def _predict(
    *,
    org_id: int,
    version_id: int,
    serving_sha256: str,
    x: Any,
    want_proba: bool,
    finite: bool,
    compiled_sha256: str = "",
    explain: tuple[dict, list[bytes]] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict | None]:
    buffers: list[bytes] = []
    header = {
        "op": "predict",
        "v": version_id,
        "sha": serving_sha256,
        "c": compiled_sha256,
        "proba": want_proba,
        "finite": finite,
        "x": wire.encode_input(x, buffers),
    }
    if explain is not None:
        # The explain request's entries number its buffers from 0: they follow the input's.
        request, extra = explain
        header["explain"] = _shifted(request, len(buffers))
        buffers.extend(extra)
    timeout = settings.RUNNER_REQUEST_TIMEOUT_SECONDS
    reply, out = _exchange(org_id, header, buffers, timeout=timeout, version_id=version_id)
    if reply.get("need") == "artifact":
        header["sha"] = load(org_id=org_id, version_id=version_id, compiled_sha256=compiled_sha256)
        reply, out = _exchange(org_id, header, buffers, timeout=timeout, version_id=version_id)
    if not reply.get("ok"):
        raise _failure(reply, version_id=version_id)
    explanation = None
    try:
        predictions = wire.decode_array(reply["p"], out)
        probabilities = wire.decode_array(reply["q"], out) if reply.get("q") is not None else None
        if explain is not None and reply.get("e") is not None:
            entry = reply["e"]
            explanation = {
                "method": entry["method"],
                "output": entry["output"],
                "values": wire.decode_array(entry["values"], out),
                "base": wire.decode_array(entry["base"], out),
            }
    except (KeyError, TypeError, wire.WireError) as exc:
        _drop(org_id)
        raise RunnerUnavailable(f"The runner answered something that is not a prediction: {exc}") from None
    RUNNER_PREDICTIONS.labels(runtime="onnx" if reply.get("runtime") == "onnx" else "sklearn").inc()
    return predictions, probabilities, explanation


def _shifted(entry: Any, offset: int) -> Any:
    """A header entry with every ``buffer`` index moved by `offset`."""
    if isinstance(entry, dict):
        return {key: (value + offset if key == "buffer" else _shifted(value, offset)) for key, value in entry.items()}
    if isinstance(entry, list):
        return [_shifted(item, offset) for item in entry]
    return entry


def warm(*, org_id: int, version_id: int, compiled_sha256: str = "") -> None:
    """Make every runner of the organization hold a version before traffic arrives.

    Traffic spreads over RUNNER_PROCESSES_PER_ORG runners, each loading what it is asked
    for; warming one would leave the first request that reaches another to load it. Each
    runner gets the artifact on a connection of its own, all at once (they load in
    parallel, one process each).
    """
    header, buffers, _sha256 = _load_message(version_id=version_id, compiled_sha256=compiled_sha256)
    failures: list[BaseException] = []

    def load_into(index: int) -> None:
        try:
            sock = _open(org_id, runner=index)
        except RunnerUnavailable as exc:
            failures.append(exc)
            return
        try:
            sock.settimeout(settings.RUNNER_LOAD_TIMEOUT_SECONDS)
            wire.send(sock, header, buffers)
            reply, _ = wire.receive(sock, max_bytes=settings.RUNNER_MAX_REPLY_BYTES)
            if not reply.get("ok"):
                failures.append(_failure(reply, version_id=version_id))
        except (OSError, wire.WireError) as exc:
            failures.append(RunnerUnavailable(f"The organization's runner stopped while loading ({exc})."))
        finally:
            sock.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=load_into, args=(index,)) for index in range(max(1, settings.RUNNER_PROCESSES_PER_ORG))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    MODEL_LOAD_SECONDS.observe(time.perf_counter() - started)
