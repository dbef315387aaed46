"""Celery tasks for batch jobs: one-line wrappers passing ids to the services.

All ack late (a worker killed mid-task leaves its message to be delivered again) and are
idempotent, so a second delivery is harmless. Storage and database hiccups are retried with
backoff; when a task gives up, or crashes, BatchTask fails the job rather than leave it
running forever. A bad row is a result (a failed job or an error column), never a retry.
"""

from __future__ import annotations

from celery import Task, shared_task, signals
from django.db import InterfaceError, OperationalError

from inference.batch import services, webhooks

__all__ = [
    "split_batch_job",
    "score_batch_chunk",
    "assemble_batch_result",
    "discard_batch_files",
    "send_batch_webhook",
    "requeue_stalled_batch_jobs",
]

TRANSIENT = (OSError, OperationalError, InterfaceError)
RETRIES = {"autoretry_for": TRANSIENT, "retry_backoff": 2, "retry_backoff_max": 60, "retry_jitter": True, "max_retries": 5}


@signals.worker_init.connect
def import_scikit_learn_before_the_pool_forks(**kwargs) -> None:
    """Import scikit-learn's estimator families once in the worker's main process.

    Pool processes are forked from it and inherit the modules, so none of them spends the
    second or two that `import sklearn.linear_model` takes on its first chunk.
    """
    import sklearn.ensemble  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import sklearn.preprocessing  # noqa: F401


class BatchTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        job_id = args[0] if args else kwargs.get("job_id")
        if job_id is not None:
            services.fail_job(
                job_id=job_id,
                error=f"The batch worker failed ({type(exc).__name__}: {exc}). Submit the job again; operators see the task "
                f"{task_id} in the logs.",
            )


@shared_task(base=BatchTask, name="inference.batch_split_job", acks_late=True, ignore_result=True, **RETRIES)
def split_batch_job(job_id: int) -> None:
    services.split_job(job_id=job_id)


@shared_task(base=BatchTask, bind=True, name="inference.score_batch_chunk", acks_late=True, ignore_result=True, **RETRIES)
def score_batch_chunk(self, job_id: int, chunk_index: int) -> None:
    services.score_chunk(job_id=job_id, index=chunk_index, worker=self.request.hostname or "")


@shared_task(base=BatchTask, name="inference.batch_assemble_result", acks_late=True, ignore_result=True, **RETRIES)
def assemble_batch_result(job_id: int) -> None:
    services.assemble_result(job_id=job_id)


@shared_task(name="inference.batch_discard_files", acks_late=True, ignore_result=True, **RETRIES)
def discard_batch_files(job_id: int) -> None:
    services.discard_intermediate_files(job_id=job_id)


@shared_task(bind=True, name="inference.batch_send_webhook", acks_late=True, ignore_result=True, max_retries=None)
def send_batch_webhook(self, job_id: int) -> None:
    """Deliver the completion event; retried with exponential backoff up to BATCH_WEBHOOK_MAX_RETRIES times."""
    from django.conf import settings

    max_retries = int(getattr(settings, "BATCH_WEBHOOK_MAX_RETRIES", 6))
    try:
        services.deliver_webhook(job_id=job_id, is_last_attempt=self.request.retries >= max_retries)
    except webhooks.DeliveryFailed as exc:
        raise self.retry(exc=exc, countdown=webhooks.backoff_seconds(self.request.retries), max_retries=max_retries) from None


@shared_task(name="inference.batch_requeue_stalled", acks_late=True, ignore_result=True)
def requeue_stalled_batch_jobs() -> int:
    return services.requeue_stalled_jobs()
