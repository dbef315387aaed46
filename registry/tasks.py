"""Celery tasks of the registry: one-line wrappers around its services."""

from __future__ import annotations

from celery import shared_task

from registry import services


@shared_task(
    name="registry.compile_version",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OSError,),  # storage or the sandbox's socket: transient; a model that fails is a result
    retry_backoff=5,
    max_retries=3,
)
def compile_version(version_id: int) -> str:
    return services.compile_version(version_id=version_id)


@shared_task(name="registry.requeue_pending_compiles", ignore_result=True)
def requeue_pending_compiles() -> int:
    """Beat's sweep: queue again the compiles still pending long after their upload (a broker that
    was down when the upload queued it), so no version stays on scikit-learn for good."""
    return services.requeue_pending_compiles()
