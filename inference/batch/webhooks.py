"""Completion webhooks: one signed POST when a job ends, retried with backoff by its task.

The body is JSON: `{"event": "batch_job.succeeded" | "batch_job.failed" | "batch_job.cancelled",
"job": {...}, "sent_at": ...}`. The header `X-Modelhost-Signature: sha256=<hex>` is the
HMAC-SHA256 of the raw body keyed with the job's webhook secret (`whsec_...`), which the 202
answer that created the job shows once. A receiver computes the same over the bytes it got
and compares with `hmac.compare_digest` before parsing; `sent_at` lets it refuse replays.

Delivery: http or https, a timeout, redirects not followed (a 3xx is a failed attempt), and
hosts that resolve to a loopback, private, link-local or otherwise non-public address are
refused unless BATCH_WEBHOOK_ALLOW_PRIVATE_HOSTS: tenants must not reach the platform's own
network through us. Hand-written on urllib: one POST needs no client library.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

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


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def is_signed_by(body: bytes, secret: str, signature: str) -> bool:
    return hmac.compare_digest(sign(body, secret), signature or "")


def backoff_seconds(retries: int) -> int:
    """Seconds before retry number `retries + 1`: base, 2x, 4x, ... capped at BATCH_WEBHOOK_BACKOFF_MAX_SECONDS."""
    base = float(getattr(settings, "BATCH_WEBHOOK_BACKOFF_SECONDS", 10))
    cap = float(getattr(settings, "BATCH_WEBHOOK_BACKOFF_MAX_SECONDS", 600))
    return int(min(cap, base * (2 ** max(0, retries))))


def event_document(job, *, result_path: str) -> dict:
    return {
        "event": f"batch_job.{job.status}",
        "job": {
            "id": job.id,
            "model": job.registered_model.full_name,
            "version": job.version.number,
            "status": job.status,
            "rows_total": job.rows_total,
            "rows_done": job.rows_done,
            "rows_failed": job.rows_failed,
            "error": job.error or None,
            "errors": job.errors,
            "result": result_path if job.status == "succeeded" else None,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
        },
        "sent_at": _iso(datetime.now(timezone.utc)),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def check_destination(url: str) -> None:
    """Refuse (permanently) a URL that is not http(s) or that resolves to a non-public address."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryFailed(f"{url!r} is not an http(s) URL.", is_permanent=True)
    if getattr(settings, "BATCH_WEBHOOK_ALLOW_PRIVATE_HOSTS", False):
        return
    try:
        addresses = {
            info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        }
    except socket.gaierror as exc:
        raise DeliveryFailed(f"Cannot resolve {parts.hostname}: {exc}.") from None
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_global:
            raise DeliveryFailed(f"{parts.hostname} resolves to {address}, which is not a public address.", is_permanent=True)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def post(*, url: str, body: bytes, secret: str, event: str, delivery_id: str) -> int:
    """POST the signed body; the status code on a 2xx, else DeliveryFailed."""
    check_destination(url)
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "Modelhost-Webhook/1",
            SIGNATURE_HEADER: sign(body, secret),
            EVENT_HEADER: event,
            DELIVERY_HEADER: delivery_id,
        },
    )
    timeout = float(getattr(settings, "BATCH_WEBHOOK_TIMEOUT_SECONDS", 10))
    try:
        with urllib.request.build_opener(_NoRedirects).open(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        raise DeliveryFailed(f"The endpoint answered {exc.code}.", status_code=exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryFailed(f"Could not reach the endpoint: {reason}.") from None
