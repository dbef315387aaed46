"""Completion webhooks: one signed POST when a job ends, retried with backoff by its task.

The body is JSON: `{"event": "batch_job.succeeded" | "batch_job.failed" | "batch_job.cancelled",
"job": {...}, "sent_at": ...}`, keyed with the job's webhook secret (`whsec_...`), which the
202 answer that created the job shows once. Sending, the signature and the address checks
are the platform's one webhook sender's (inference.webhooks, described in docs/webhooks.md).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from django.conf import settings

from inference.webhooks import DeliveryFailed, deliver, is_signed_by, resolve_destination, sign  # noqa: F401 (the batch tasks use them)


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def backoff_seconds(retries: int) -> int:
    """Seconds before retry number `retries + 1`: base, 2x, 4x, ... capped at BATCH_WEBHOOK_BACKOFF_MAX_SECONDS."""
    from inference import webhooks

    return webhooks.backoff_seconds(
        retries=retries, base=settings.BATCH_WEBHOOK_BACKOFF_SECONDS, cap=settings.BATCH_WEBHOOK_BACKOFF_MAX_SECONDS
    )


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
        "sent_at": _iso(datetime.now(UTC)),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def post(*, job, body: bytes, event: str, delivery_id: str) -> int:
    """POST the job's signed event through the one sender; the status code on a 2xx, else DeliveryFailed."""
    return deliver(
        url=job.webhook_url,
        body=body,
        secret=job.webhook_secret,
        event=event,
        delivery_id=delivery_id,
        allow_private=settings.BATCH_WEBHOOK_ALLOW_PRIVATE_HOSTS,
        organization_id=job.organization_id,
        subject=f"batch_job:{job.id}",
    )
