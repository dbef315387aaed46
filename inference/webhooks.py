"""The one webhook sender: batch job completions and drift alerts go out through `deliver`.

Signature (docs/webhooks.md): `X-Modelhost-Signature: t=<unix seconds>,v1=<hex>` where hex is
the HMAC-SHA256, keyed with the endpoint's secret (`whsec_...`), of `<t>.` followed by the raw
body. The receiver recomputes it over the bytes it got, compares with `hmac.compare_digest`,
and refuses a `t` too far from its clock (a replayed delivery).

Where it connects: the host is resolved once; every address it resolves to must be public
(not loopback, private, link-local, reserved...), unless `allow_private` or it lies in
WEBHOOK_ALLOWED_NETWORKS; the connection then goes to that checked address, with the name
only in the Host header, SNI and certificate check. So a DNS answer that changes between
the check and the connection (rebinding) cannot move the request to an internal address.
Redirects are never followed: a 3xx is a failed attempt, like a 4xx or 5xx. Every attempt,
delivered or not, is kept as a WebhookDelivery row the organization reads
(`GET /api/v1/orgs/{org}/webhook-deliveries`).

Built on urllib3 (already installed with requests, pinned in requirements.txt): its
connection pools take the address to connect to and the name to verify separately
(`server_hostname`, `assert_hostname`), which is what pinning the checked address needs.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
import urllib.parse
from dataclasses import dataclass

import urllib3
from django.conf import settings

SIGNATURE_HEADER = "X-Modelhost-Signature"
EVENT_HEADER = "X-Modelhost-Event"
DELIVERY_HEADER = "X-Modelhost-Delivery"


class DeliveryFailed(Exception):
    """An attempt that did not get a 2xx; `is_permanent` when trying again cannot help."""

    def __init__(self, message: str, *, status_code: int | None = None, is_permanent: bool = False) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.is_permanent = is_permanent


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str
    port: int
    path: str
    address: str  # the checked address the connection goes to


def sign(*, body: bytes, secret: str, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def is_signed_by(*, body: bytes, secret: str, signature: str, tolerance_seconds: int = 300, now: float | None = None) -> bool:
    """What a receiver does: check the signature and that its timestamp is recent."""
    fields = dict(part.split("=", 1) for part in (signature or "").split(",") if "=" in part)
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(body=body, secret=secret, timestamp=timestamp), signature)


def backoff_seconds(*, retries: int, base: float, cap: float) -> int:
    """Seconds before retry number `retries + 1`: base, 2x, 4x, ... capped at `cap`."""
    return int(min(cap, base * (2 ** max(0, retries))))


def _is_allowed(address: str, *, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if allow_private or ip.is_global:
        return True
    return any(ip in ipaddress.ip_network(network) for network in settings.WEBHOOK_ALLOWED_NETWORKS)


def resolve_destination(url: str, *, allow_private: bool) -> Destination:
    """Resolve the URL's host once and return the first address, all of them checked."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryFailed(f"{url!r} is not an http(s) URL.", is_permanent=True)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [info[4][0] for info in socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)]
    except socket.gaierror as exc:
        raise DeliveryFailed(f"Cannot resolve {parts.hostname}: {exc}.") from None
    if not addresses:
        raise DeliveryFailed(f"Cannot resolve {parts.hostname}.")
    for address in addresses:
        if not _is_allowed(address, allow_private=allow_private):
            raise DeliveryFailed(f"{parts.hostname} resolves to {address}, which is not a public address.", is_permanent=True)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Destination(scheme=parts.scheme, host=parts.hostname, port=port, path=path, address=addresses[0].split("%")[0])


def deliver(
    *, url: str, body: bytes, secret: str, event: str, delivery_id: str, allow_private: bool, organization_id: int, subject: str
) -> int:
    """POST the signed body to the checked address and log the attempt; the status code on a 2xx, else DeliveryFailed."""
    from inference.models import WebhookDelivery

    started = time.perf_counter()
    status_code, error = None, ""
    try:
        status_code = _post(url=url, body=body, secret=secret, event=event, delivery_id=delivery_id, allow_private=allow_private)
        return status_code
    except DeliveryFailed as exc:
        status_code, error = exc.status_code, str(exc)
        raise
    finally:
        WebhookDelivery.objects.create(
            organization_id=organization_id,
            subject=subject,
            event=event,
            delivery_id=delivery_id,
            url=url[:2000],
            status_code=status_code,
            is_delivered=not error and status_code is not None,
            error=error[:500],
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )


def _post(*, url: str, body: bytes, secret: str, event: str, delivery_id: str, allow_private: bool) -> int:
    destination = resolve_destination(url, allow_private=allow_private)
    timeout = urllib3.Timeout(connect=settings.WEBHOOK_TIMEOUT_SECONDS, read=settings.WEBHOOK_TIMEOUT_SECONDS)
    if destination.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            destination.address,
            destination.port,
            timeout=timeout,
            retries=False,
            maxsize=1,
            cert_reqs="CERT_REQUIRED",
            server_hostname=destination.host,
            assert_hostname=destination.host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(destination.address, destination.port, timeout=timeout, retries=False, maxsize=1)
    default_port = 443 if destination.scheme == "https" else 80
    host_header = destination.host if destination.port == default_port else f"{destination.host}:{destination.port}"
    headers = {
        "Host": host_header,
        "Content-Type": "application/json",
        "User-Agent": "Modelhost-Webhooks/1",
        SIGNATURE_HEADER: sign(body=body, secret=secret, timestamp=int(time.time())),
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
    }
    try:
        with pool:
            response = pool.urlopen("POST", destination.path, body=body, headers=headers, redirect=False, retries=False)
    except urllib3.exceptions.HTTPError as exc:
        raise DeliveryFailed(f"Could not reach the endpoint: {exc}.") from None
    if not 200 <= response.status < 300:
        if 300 <= response.status < 400:
            raise DeliveryFailed(
                f"The endpoint answered {response.status}; redirects are not followed.", status_code=response.status
            )
        raise DeliveryFailed(f"The endpoint answered {response.status}.", status_code=response.status)
    return response.status
