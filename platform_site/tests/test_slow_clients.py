"""Slow clients against the web started as production starts it (`python -m platform_site.serve`:
granian, 2 workers x 2 threads): stalled request bodies neither hold the request threads nor
stay open past WEB_BODY_TIMEOUT_SECONDS."""

import http.client
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
import requests

from platform_site import rsgi
from platform_site.tests.processes import free_port, wait_for_http, web_process_env
from registry.tests import factories as f

ROOT = Path(__file__).resolve().parents[2]
BODY_TIMEOUT = 3
STALLED = 8  # twice the request threads (2 workers x 2 threads)


def stalled_request(port: int, path: str, *, declared: int = 5000, sent: int = 100) -> socket.socket:
    """A POST that announces `declared` bytes of body and sends `sent`, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    sock.sendall(head.encode() + b"{" + b" " * (sent - 1))
    return sock


def slow_post(port: int, path: str, body: bytes, *, pieces: int, pause: float, api_key: str) -> tuple[int, dict]:
    """POST `body` in `pieces` parts with `pause` seconds between them; the answer's status and JSON."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest("POST", path)
        for name, value in (("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("X-API-Key", api_key)):
            connection.putheader(name, value)
        connection.endheaders()
        size = -(-len(body) // pieces)
        for start in range(0, len(body), size):
            if start:
                time.sleep(pause)
            connection.send(body[start : start + size])
        response = connection.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        connection.close()


def closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Read until the server closes the connection; return the time it took and what it sent."""
    sock.settimeout(seconds)
    started, received = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return float("inf"), received
    except ConnectionResetError:
        pass
    return time.monotonic() - started, received


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_stalled_bodies_do_not_stop_predictions_and_are_closed(tenant_a, tmp_path, settings):
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, promote=True)
    port = free_port()
    env = web_process_env(port=port, metrics_dir=tmp_path / "prometheus", settings=settings)
    env.pop("WEB_THREADS", None)  # production's default: two per worker
    env["WEB_BODY_TIMEOUT_SECONDS"] = str(BODY_TIMEOUT)
    log_path = tmp_path / "web.log"
    with log_path.open("wb") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "platform_site.serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    predict = "/api/v1/models/acme/iris/predict"
    stalled: list[socket.socket] = []
    try:
        wait_for_http(f"{base}/healthz", web, timeout=60, log=log_path.read_text)
        opened = time.monotonic()
        # Half on the prediction path, half on Django's (an API route), so both are covered.
        for i in range(STALLED):
            stalled.append(stalled_request(port, predict if i % 2 == 0 else "/api/v1/orgs"))
        stalled_request(port, predict).close()  # and one that goes away mid-body
        time.sleep(0.5)  # the server has taken every stalled request

        def call(i: int) -> tuple[int, float]:
            started = time.monotonic()
            if i % 3 == 2:
                response = requests.get(f"{base}/healthz", timeout=BODY_TIMEOUT)
            else:
                response = requests.post(
                    f"{base}{predict}",
                    json={"inputs": [[5.1, 3.5, 1.4, 0.2]]},
                    headers={"X-API-Key": tenant_a.api_key},
                    timeout=BODY_TIMEOUT,
                )
            return response.status_code, time.monotonic() - started

        # Valid requests answer at once while the stalled ones wait, well before their deadline.
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(call, range(12)))
        assert [status for status, _ in answers] == [200] * 12
        assert max(seconds for _, seconds in answers) < 2.0, answers
        assert time.monotonic() - opened < BODY_TIMEOUT, "the valid requests were not served before the stalled ones timed out"

        # Each stalled request is answered 408 and closed once its body is BODY_TIMEOUT late.
        for sock in stalled:
            seconds, received = closed_within(sock, BODY_TIMEOUT + 10)
            assert seconds < BODY_TIMEOUT + 10, "a stalled request was never closed"
            assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert time.monotonic() - opened < BODY_TIMEOUT + 5

        # The bound is on the pauses, not the whole body: a large body (kept in a temporary
        # file) that takes longer than BODY_TIMEOUT in all, in pieces, is served.
        rows = [[5.1 + i * 1e-7, 3.5000000001, 1.4000000001, 0.2000000001] for i in range(9000)]
        body = orjson.dumps({"inputs": rows})
        assert len(body) > rsgi.SPOOL_BYTES
        started = time.monotonic()
        status, answer = slow_post(port, predict, body, pieces=3, pause=BODY_TIMEOUT * 0.6, api_key=tenant_a.api_key)
        assert time.monotonic() - started > BODY_TIMEOUT
        assert status == 200 and len(answer["predictions"]) == len(rows), (status, str(answer)[:300])

        # A chunked body (no Content-Length) arrives whole.
        response = requests.post(
            f"{base}{predict}",
            data=iter([body[:1000], body[1000:]]),
            timeout=30,
            headers={"X-API-Key": tenant_a.api_key, "Content-Type": "application/json"},
        )
        assert response.status_code == 200 and len(response.json()["predictions"]) == len(rows)

        # A response given as many chunks (a static file) is streamed whole.
        static = requests.get(f"{base}/static/rest_framework/js/jquery-3.7.1.min.js", timeout=30)
        assert static.status_code == 200
        assert static.content == (ROOT / "staticfiles/rest_framework/js/jquery-3.7.1.min.js").read_bytes()
        assert "Traceback" not in log_path.read_text()
    finally:
        for sock in stalled:
            sock.close()
        web.terminate()
        web.wait(timeout=30)
