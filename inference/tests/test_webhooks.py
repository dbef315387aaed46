"""The one webhook sender against real local HTTP servers: redirects, pinned addresses, signatures."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from inference import webhooks

pytestmark = pytest.mark.django_db


class LocalServer:
    """An HTTP server on `host` answering every request with `status` (and `Location`), keeping what it got."""

    def __init__(self, host: str, *, status: int, location: str | None = None, port: int = 0) -> None:
        self.received: list[tuple[str, dict, bytes]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                server.received.append((self.command, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.host, self.port = host, self.httpd.server_port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    made: list[LocalServer] = []

    def make(host: str, **kwargs) -> LocalServer:
        made.append(LocalServer(host, **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


def send(url: str, **kwargs) -> int:
    from accounts.tests.factories import OrganizationFactory

    organization = OrganizationFactory()
    return webhooks.deliver(
        url=url,
        body=b'{"event":"test"}',
        secret="whsec_k",
        event="test",
        delivery_id="d-1",
        organization_id=organization.id,
        subject="test:1",
        **kwargs,
    )


def test_a_redirect_to_loopback_is_a_failed_attempt_and_is_not_followed(servers, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.2/32"]  # stands for the receiver's public address
    inner = servers("127.0.0.1", status=204)
    redirector = servers("127.0.0.2", status=302, location=f"http://127.0.0.1:{inner.port}/admin")
    with pytest.raises(webhooks.DeliveryFailed, match="redirects are not followed") as failure:
        send(f"{redirector.url}/hook", allow_private=False)
    assert failure.value.status_code == 302 and not failure.value.is_permanent
    assert [method for method, _, _ in redirector.received] == ["POST"]
    assert inner.received == []


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:9/x", id="loopback"),
        pytest.param("http://10.1.2.3/x", id="private-network"),
        pytest.param("http://169.254.169.254/latest", id="cloud-metadata"),
        pytest.param("http://[::1]:9/x", id="ipv6-loopback"),
        pytest.param("ftp://hooks.example.com/x", id="not-http"),
    ],
)
def test_non_public_destinations_are_refused_for_good(url):
    with pytest.raises(webhooks.DeliveryFailed) as failure:
        send(url, allow_private=False)
    assert failure.value.is_permanent


def test_the_connection_goes_to_the_address_that_was_checked(servers, settings, monkeypatch):
    # DNS cannot be served from this machine, so the resolver is replaced: its first answer is
    # an allowed address, every later one loopback, as a rebinding attacker's name server would.
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.2/32"]
    checked = servers("127.0.0.2", status=204)
    try:
        internal = servers("127.0.0.1", status=204, port=checked.port)
    except OSError:
        pytest.skip("the same port is taken on 127.0.0.1")
    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["127.0.0.2"])

    def rebinding(host, port, *args, **kwargs):
        if host != "hooks.example.com":
            return real_getaddrinfo(host, port, *args, **kwargs)
        address = next(answers, "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    assert send(f"http://hooks.example.com:{checked.port}/hook", allow_private=False) == 204
    assert internal.received == []
    [(method, headers, body)] = checked.received
    assert headers["host"] == f"hooks.example.com:{checked.port}"


def test_the_signature_is_the_hmac_of_timestamp_dot_body(servers):
    receiver = servers("127.0.0.1", status=200)
    assert send(f"{receiver.url}/hook", allow_private=True) == 200
    [(_, headers, body)] = receiver.received
    fields = dict(part.split("=", 1) for part in headers["x-modelhost-signature"].split(","))
    assert abs(int(fields["t"]) - time.time()) < 60
    assert fields["v1"] == hmac.new(b"whsec_k", fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert webhooks.is_signed_by(body=body, secret="whsec_k", signature=headers["x-modelhost-signature"])
    assert not webhooks.is_signed_by(body=body + b" ", secret="whsec_k", signature=headers["x-modelhost-signature"])
    assert not webhooks.is_signed_by(
        body=body, secret="whsec_k", signature=headers["x-modelhost-signature"], now=time.time() + 600
    )
    assert (headers["x-modelhost-event"], headers["x-modelhost-delivery"]) == ("test", "d-1")
