"""Drift alerts: an audit event, and a signed webhook to the organization if it set one.

Once per report: `alerted_at` is claimed with a conditional UPDATE, so a report alerts at
most once however often this runs. The webhook is delivered by a task after the report
commits and retried with backoff until it succeeds (`webhook_delivered_at`); a crash
between the receiver's 2xx and that mark can deliver it twice, so each delivery carries
the report id (`X-Modelhost-Delivery`) for the receiver to ignore a repeat.

Sending, signing (docs/webhooks.md) and the address checks are the platform's one webhook
sender's (inference.webhooks), keyed with the organization's webhook secret.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

import orjson
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Organization
from accounts.principals import Caller
from accounts.services import record_audit_event
from analytics.models import AlertSettings, DriftReport
from inference import webhooks
from platform_site.errors import InvalidInput


class WebhookDeliveryFailed(Exception):
    """The receiver did not answer 2xx, or could not be reached: worth retrying."""


def alert_on_drift(*, report: DriftReport, caller: Caller | None = None) -> bool:
    """Record the alert once; True if this call is the one that did."""
    claimed = DriftReport.objects.filter(pk=report.pk, alerted_at__isnull=True).update(alerted_at=timezone.now())
    if not claimed:
        return False
    drifted = [f["name"] for f in report.features if f.get("drifted")]
    record_audit_event(
        organization=report.organization,
        caller=caller,
        action="drift.detected",
        target=report,
        data={
            "model": report.registered_model.name,
            "version": report.version.number,
            "share_drifted": round(report.share_drifted, 4),
            "drifted_features": drifted,
            "window_start": report.window_start.isoformat(),
            "window_end": report.window_end.isoformat(),
        },
    )
    if AlertSettings.objects.filter(organization_id=report.organization_id).exclude(drift_webhook_url="").exists():
        from analytics.tasks import deliver_drift_webhook

        transaction.on_commit(lambda: deliver_drift_webhook.delay(report.pk))
    return True


def webhook_payload(report: DriftReport) -> dict:
    return {
        "event": "drift.detected",
        "report_id": report.pk,
        "organization": report.organization.slug,
        "model": report.registered_model.name,
        "version": report.version.number,
        "window_start": report.window_start.isoformat(),
        "window_end": report.window_end.isoformat(),
        "share_drifted": report.share_drifted,
        "drift_share_threshold": report.drift_share_threshold,
        "drifted_features": [f["name"] for f in report.features if f.get("drifted")],
        "prediction_drifted": bool(report.prediction.get("drifted")),
        "created_at": report.created_at.isoformat(),
    }


def deliver_drift_webhook(*, report_id: int) -> bool:
    """POST the report's alert to the organization's webhook; True once delivered."""
    report = DriftReport.objects.select_related("organization", "registered_model", "version").filter(pk=report_id).first()
    if report is None or report.webhook_delivered_at is not None:
        return report is not None
    target = AlertSettings.objects.filter(organization_id=report.organization_id).first()
    if target is None or not target.drift_webhook_url:
        return False
    body = orjson.dumps(webhook_payload(report))
    DriftReport.objects.filter(pk=report.pk).update(webhook_attempts=report.webhook_attempts + 1)
    try:
        webhooks.deliver(
            url=target.drift_webhook_url,
            body=body,
            secret=target.drift_webhook_secret,
            event="drift.detected",
            delivery_id=f"drift-report-{report.pk}",
            allow_private=settings.ANALYTICS_WEBHOOK_ALLOW_PRIVATE,
            organization_id=report.organization_id,
            subject=f"drift_report:{report.pk}",
        )
    except webhooks.DeliveryFailed as exc:
        DriftReport.objects.filter(pk=report.pk).update(webhook_error=str(exc)[:500])
        raise WebhookDeliveryFailed(str(exc)) from exc
    DriftReport.objects.filter(pk=report.pk).update(webhook_delivered_at=timezone.now(), webhook_error="")
    return True


def check_webhook_url(url: str) -> None:
    """Refuse, when it is saved, a URL that would make the worker call itself or the private network.

    https only, and every address the host resolves to must be public, unless
    ANALYTICS_WEBHOOK_ALLOW_PRIVATE (local development and tests). Each delivery checks again,
    on the address it connects to (inference.webhooks).
    """
    allow_private = settings.ANALYTICS_WEBHOOK_ALLOW_PRIVATE
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or (parts.scheme == "http" and not allow_private):
        raise InvalidInput(
            "The webhook URL must be an https:// URL.", errors=[{"field": "drift_webhook_url", "message": "must be https"}]
        )
    try:
        webhooks.resolve_destination(url, allow_private=allow_private)
    except webhooks.DeliveryFailed as exc:
        message = "private or reserved address" if exc.is_permanent else "host does not resolve"
        raise InvalidInput(
            f"The webhook URL is refused: {exc}", errors=[{"field": "drift_webhook_url", "message": message}]
        ) from None


@transaction.atomic
def update_alert_settings(
    *, caller: Caller, organization: Organization, drift_webhook_url: str | None = None, rotate_secret: bool = False
) -> tuple[AlertSettings, str | None]:
    """Set the webhook URL; returns the settings and the new secret when one was made (shown once)."""
    row, _ = AlertSettings.objects.select_for_update().get_or_create(organization=organization)
    new_secret = None
    if drift_webhook_url is not None:
        if drift_webhook_url:
            check_webhook_url(drift_webhook_url)
        row.drift_webhook_url = drift_webhook_url
    if row.drift_webhook_url and (rotate_secret or not row.drift_webhook_secret):
        new_secret = "whsec_" + secrets.token_urlsafe(32)
        row.drift_webhook_secret = new_secret
    row.updated_at = timezone.now()
    row.save()
    record_audit_event(
        organization=organization,
        caller=caller,
        action="alert_settings.updated",
        target=row,
        data={"drift_webhook_url": row.drift_webhook_url, "secret_rotated": new_secret is not None},
    )
    return row, new_secret
