"""Celery tasks for analytics: one-line wrappers around services, passing ids (queue `analytics`)."""

from __future__ import annotations

from datetime import datetime

from celery import shared_task

from analytics.services import alerts, drift, mirrors, quality, replays, usage


@shared_task(name="analytics.roll_up_usage", acks_late=True, ignore_result=True)
def roll_up_usage() -> int:
    return len(usage.roll_up_usage().hours)


@shared_task(name="analytics.roll_up_quality", acks_late=True, ignore_result=True)
def roll_up_quality() -> int:
    return quality.roll_up_quality()


@shared_task(name="analytics.prune_prediction_records", acks_late=True, ignore_result=True)
def prune_prediction_records() -> int:
    return usage.prune_prediction_records()


@shared_task(name="analytics.schedule_drift_reports", acks_late=True, ignore_result=True)
def schedule_drift_reports() -> int:
    """Fan out one report task per production version that served traffic in the last window."""
    windows = drift.scheduled_windows()
    for version_id, start, end in windows:
        run_scheduled_drift_report.delay(version_id, start.isoformat(), end.isoformat())
    return len(windows)


@shared_task(name="analytics.run_scheduled_drift_report", acks_late=True, ignore_result=True)
def run_scheduled_drift_report(version_id: int, window_start: str, window_end: str) -> int | None:
    report = drift.run_scheduled_report(
        version_id=version_id, window_start=datetime.fromisoformat(window_start), window_end=datetime.fromisoformat(window_end)
    )
    return report.pk if report else None


@shared_task(
    name="analytics.deliver_drift_webhook",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(alerts.WebhookDeliveryFailed,),
    retry_backoff=30,
    retry_backoff_max=3600,
    max_retries=8,
)
def deliver_drift_webhook(report_id: int) -> bool:
    return alerts.deliver_drift_webhook(report_id=report_id)


@shared_task(name="analytics.compute_drift_report", acks_late=True, ignore_result=True)
def compute_drift_report(report_id: int) -> None:
    drift.compute_report(report_id=report_id)


@shared_task(name="analytics.compute_replay", acks_late=True, ignore_result=True)
def compute_replay(replay_id: int) -> None:
    replays.compute_replay(replay_id=replay_id)


@shared_task(name="analytics.mirror_predictions", acks_late=True, ignore_result=True)
def mirror_predictions() -> int:
    """Fan out one task per running mirror (beat, every ANALYTICS_MIRROR_SECONDS)."""
    ids = mirrors.running_mirror_ids()
    for mirror_id in ids:
        mirror_one.delay(mirror_id)
    return len(ids)


# A run predicts at most ANALYTICS_MIRROR_RUN_ROWS rows of its mirror; a candidate that hangs is
# cut off by the runner's request timeout per batch, and the run as a whole by these limits.
@shared_task(name="analytics.mirror_one", acks_late=True, ignore_result=True, soft_time_limit=300, time_limit=330)
def mirror_one(mirror_id: int) -> int:
    return mirrors.mirror_once(mirror_id=mirror_id)
