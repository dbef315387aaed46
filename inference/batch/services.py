"""Writes and rules for batch jobs: submit, split, score a chunk, assemble, cancel, notify.

States: queued -> running -> succeeded | failed, and queued | running -> cancelled. Each move
is one conditional UPDATE (`WHERE status IN ...`), so a late, repeated or redelivered task
never moves a finished job.

Exactly-once counting on at-least-once tasks: a chunk's part is written once (see storage),
and the chunk flips `is_done` from False to True in one conditional UPDATE; only the run that
flipped it adds the chunk's rows to the job and writes its prediction record, in the same
transaction. The run that sees every chunk done enqueues the assembly (idempotent too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from accounts.models import Organization
from accounts.principals import Caller
from accounts.services import record_audit_event
from inference import limits as quota_limits
from inference.batch import heartbeat, inputs, scoring, selectors, storage, webhooks
from inference.models import BatchChunk, BatchJob
from inference.routing import target_for
from platform_site.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, RateLimited
from registry.models import ModelVersion, RegisteredModel

Status = BatchJob.Status
ACTIVE = selectors.ACTIVE
ERROR_DETAIL_MAX = 4000


class TooManyJobs(RateLimited):
    code, title = "too_many_batch_jobs", "Too many batch jobs are running"


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def result_path(job: BatchJob) -> str:
    return f"/api/v1/batch-jobs/{job.id}/result"


# ------------------------------------------------------------------------------ submission


@dataclass
class Submission:
    job: BatchJob
    # Shown once, in the 202 answer: the receiver checks the webhook's signature with it.
    webhook_secret: str | None


def _version_for(model: RegisteredModel, number: int | None) -> ModelVersion:
    if number is not None:
        version = ModelVersion.objects.filter(registered_model=model, number=number).first()
        if version is None:
            raise NotFound(f"{model.full_name} has no version {number}.")
        return version
    if model.production_version_id is None:
        raise Conflict(
            f"{model.full_name} has no production version; promote one or pass version.",
            errors=[{"field": "version", "message": "no production version"}],
        )
    return model.production_version


def _check_concurrency(organization: Organization, limit: int) -> None:
    active = selectors.active_job_count(organization=organization)
    if limit and active >= limit:
        raise TooManyJobs(
            f"{active} batch jobs of this organization are queued or running; the limit is {limit}. Retry when one ends.",
            headers={"Retry-After": "30"},
        )


def submit_job(
    *,
    caller: Caller,
    model: RegisteredModel,
    upload: UploadedFile,
    version_number: int | None = None,
    want_proba: bool = False,
    on_error: str = BatchJob.OnError.FAIL,
    webhook_url: str = "",
) -> Submission:
    """Check the file against the signature and the limits, store it, and queue the job (before any scoring)."""
    organization = model.organization
    version = _version_for(model, version_number)
    limits = selectors.limits_for(organization=organization)
    _check_concurrency(organization, limits.max_concurrent_jobs)
    if upload.size is not None and upload.size > limits.max_file_bytes:
        raise PayloadTooLarge(
            f"The file is {upload.size} bytes; this organization's limit is {limits.max_file_bytes} bytes.",
            errors=[{"field": "file", "message": f"larger than {limits.max_file_bytes} bytes"}],
        )
    if want_proba and not version.has_predict_proba:
        raise InvalidInput(
            f"{model.full_name} v{version.number} has no predict_proba; send probabilities=false.",
            errors=[{"field": "probabilities", "message": "the model has no probabilities"}],
        )
    if want_proba and version.classes and isinstance(version.classes[0], list):
        raise InvalidInput(
            f"{model.full_name} v{version.number} is a multi-output classifier: batch results carry its predictions only; "
            "send probabilities=false, or ask the predict endpoint for each output's probabilities.",
            errors=[{"field": "probabilities", "message": "not available for a multi-output model's batch job"}],
        )
    spec = target_for(version).spec
    shape = inputs.inspect_upload(upload, spec, max_rows=limits.max_rows, max_bytes=limits.max_file_bytes)
    reserved = _reserve_rows(caller=caller, organization=organization, rows=shape.lines)
    stored = None
    secret = webhooks.new_secret() if webhook_url else None
    try:
        prefix = storage.new_prefix(organization_id=organization.id)
        extension = shape.format + (".gz" if shape.compressed else "")
        upload.seek(0)
        stored = storage.batch_storage().save(f"{prefix}/input.{extension}", upload)
        with transaction.atomic():
            # One submission at a time per organization, so the concurrency limit holds under races.
            Organization.objects.select_for_update().filter(id=organization.id).first()
            _check_concurrency(organization, limits.max_concurrent_jobs)
            job = BatchJob.objects.create(
                organization=organization,
                registered_model=model,
                version=version,
                created_by=caller.person,
                api_key_id=caller.api_key.id if caller.api_key else None,
                input_format=shape.format,
                input_name=stored,
                input_filename=(upload.name or "")[:255],
                input_compressed=shape.compressed,
                input_bytes=upload.size or 0,
                storage_prefix=prefix,
                columns=shape.columns,
                want_proba=want_proba,
                on_error=on_error,
                chunk_rows=int(_setting("BATCH_CHUNK_ROWS", 100_000)),
                chunk_max_bytes=int(_setting("BATCH_CHUNK_MAX_BYTES", 4 * 1024 * 1024)),
                webhook_url=webhook_url,
                webhook_secret=secret or "",
                progressed_at=timezone.now(),
                quota_month=reserved.month,
                quota_rows_reserved=shape.lines if reserved.enforced else 0,
            )
            record_audit_event(
                organization=organization,
                caller=caller,
                action="batch_job.created",
                target=job,
                data={"model": model.full_name, "version": version.number, "bytes": job.input_bytes},
            )
            _enqueue_on_commit("split", job.id)
    except BaseException:
        if stored is not None:
            storage.delete(stored)
        if reserved.enforced:
            quota_limits.release_rows(
                subject=_quota_subject(caller), org_id=organization.id, month=reserved.month, rows=shape.lines
            )
        raise
    return Submission(job=job, webhook_secret=secret)


def _quota_subject(caller: Caller) -> str:
    return f"k{caller.api_key.id}" if caller.api_key else f"u{caller.user.pk}"


def _reserve_rows(*, caller: Caller, organization: Organization, rows: int) -> quota_limits.LimitState:
    """Count the submission as a request and reserve its rows against the monthly quotas, as a
    prediction does (the file's line count: at least its rows); 429 with the quota's headers
    when they do not fit. The job gives back what it does not deliver when it ends."""
    key = caller.api_key
    return quota_limits.check_and_count(
        subject=_quota_subject(caller),
        org_id=organization.id,
        key_limit=key.rate_limit_per_minute if key else 0,
        org_limit=organization.rate_limit_per_minute,
        key_quota=key.monthly_quota if key else 0,
        org_quota=organization.monthly_quota,
        rows=rows,
    )


def settle_quota(*, job_id: int) -> int:
    """Give back the rows a finished job reserved and did not deliver (all of them unless it
    succeeded; rows that failed validation are not delivered either). Once per job; returns
    the rows given back."""
    job = BatchJob.objects.filter(id=job_id).exclude(status__in=ACTIVE).first()
    if job is None or not BatchJob.objects.filter(id=job_id, quota_settled_at__isnull=True).update(
        quota_settled_at=timezone.now()
    ):
        return 0
    delivered = job.rows_done - job.rows_failed if job.status == Status.SUCCEEDED else 0
    unused = max(job.quota_rows_reserved - delivered, 0)
    if unused and job.quota_month:
        subject = f"k{job.api_key_id}" if job.api_key_id else f"u{job.created_by_id}"
        quota_limits.release_rows(subject=subject, org_id=job.organization_id, month=job.quota_month, rows=unused)
    return unused


@transaction.atomic
def cancel_job(*, caller: Caller, job: BatchJob) -> BatchJob:
    """Stop a queued or running job: tasks still queued do nothing, a running chunk finishes and is dropped."""
    moved = BatchJob.objects.filter(id=job.id, status__in=ACTIVE).update(
        status=Status.CANCELLED, finished_at=timezone.now(), webhook_status=_pending_webhook()
    )
    job.refresh_from_db()
    if not moved:
        raise Conflict(f"The job is already {job.status}.", errors=[{"field": "status", "message": job.status}])
    record_audit_event(organization=job.organization, caller=caller, action="batch_job.cancelled", target=job)
    _after_end(job.id)
    return job


# ------------------------------------------------------------------------------ the worker side


def _pending_webhook():
    return Case(When(webhook_url="", then=Value("")), default=Value(BatchJob.WebhookStatus.PENDING))


def _after_end(job_id: int) -> None:
    transaction.on_commit(lambda: settle_quota(job_id=job_id))
    _enqueue_on_commit("webhook", job_id)
    _enqueue_on_commit("discard", job_id)


def fail_job(*, job_id: int, error: str, errors: list[dict] | None = None) -> bool:
    """Fail a queued or running job with a message; False if it had already ended."""
    with transaction.atomic():
        moved = BatchJob.objects.filter(id=job_id, status__in=ACTIVE).update(
            status=Status.FAILED,
            error=error[:ERROR_DETAIL_MAX],
            errors=(errors or [])[:100],
            finished_at=timezone.now(),
            webhook_status=_pending_webhook(),
        )
        if moved:
            _after_end(job_id)
    return bool(moved)


def _note_progress(job_id: int) -> bool:
    """Stamp the job as progressing; False when it is no longer running."""
    return bool(BatchJob.objects.filter(id=job_id, status=Status.RUNNING).update(progressed_at=timezone.now()))


def _status_of(job_id: int) -> str | None:
    return BatchJob.objects.filter(id=job_id).values_list("status", flat=True).first()


def split_job(*, job_id: int) -> None:
    """Cut the stored input into chunk files and queue one task per chunk as each is written."""
    BatchJob.objects.filter(id=job_id, status=Status.QUEUED).update(status=Status.RUNNING, started_at=timezone.now())
    job = BatchJob.objects.select_related("organization").filter(id=job_id).first()
    if job is None or job.status != Status.RUNNING:
        return
    if job.chunks_total is not None:
        # A redelivered split whose first run finished: queue what is not done yet (twins are harmless).
        for index in BatchChunk.objects.filter(job=job, is_done=False).values_list("index", flat=True):
            _enqueue_on_commit("chunk", job.id, index)
        _queue_assembly_if_complete(job_id)
        return
    max_rows = selectors.limits_for(organization=job.organization).max_rows
    rows = chunks = 0
    checked = 0.0
    with storage.open_for_reading(job.input_name) as handle:
        stream = inputs.open_records(handle, compressed=job.input_compressed)
        is_csv = job.input_format == BatchJob.Format.CSV
        if is_csv:
            inputs.read_first_record(stream, is_csv=True)  # the header, checked at submission
        for chunk in inputs.RecordSplitter(stream, is_csv=is_csv, rows=job.chunk_rows, max_bytes=job.chunk_max_bytes):
            rows += chunk.rows
            chunks += 1
            if rows > max_rows:
                fail_job(job_id=job_id, error=f"The file has more than {max_rows} rows, this organization's limit per job.")
                return
            if time.monotonic() - checked > 0.5:  # a cancel stops the split within half a second
                if not _note_progress(job_id):
                    return  # cancelled (or failed by a chunk) while splitting
                checked = time.monotonic()
            storage.write_bytes_once(storage.chunk_name(job.storage_prefix, chunk.index), chunk.data)
            BatchChunk.objects.bulk_create(
                [BatchChunk(job=job, index=chunk.index, first_row=chunk.first_row, rows=chunk.rows)], ignore_conflicts=True
            )
            _enqueue_on_commit("chunk", job.id, chunk.index)  # at once: the chunk row is committed
    if rows == 0:
        fail_job(job_id=job_id, error="The file has no rows.")
        return
    with transaction.atomic():
        locked = BatchJob.objects.select_for_update().get(id=job_id)
        locked.rows_total, locked.chunks_total = rows, chunks
        locked.save(update_fields=["rows_total", "chunks_total"])
        if locked.status == Status.RUNNING and locked.chunks_done >= chunks:
            _enqueue_on_commit("assemble", job_id)


def _layout(job: BatchJob) -> scoring.ChunkLayout:
    return scoring.ChunkLayout.build(
        input_format=job.input_format,
        columns=job.columns,
        spec=target_for(job.version).spec,
        want_proba=job.want_proba,
        skip_bad_rows=job.on_error == BatchJob.OnError.SKIP,
        classes=job.version.classes,
        chunk_rows=job.chunk_rows,
    )


def score_chunk(*, job_id: int, index: int, worker: str = "") -> None:
    """Score chunk `index` into its part and count it once; a bad row fails the job unless skipped."""
    from inference import predictors

    job = BatchJob.objects.select_related("version", "registered_model").filter(id=job_id).first()
    if job is None or job.status != Status.RUNNING:
        return
    chunk = BatchChunk.objects.filter(job_id=job_id, index=index).first()
    if chunk is None:
        return
    if chunk.is_done:
        _queue_assembly_if_complete(job_id)  # the earlier run may have died before queueing it
        return
    BatchChunk.objects.filter(id=chunk.id).update(attempts=F("attempts") + 1, worker=worker[:200], started_at=timezone.now())
    with heartbeat.beating(chunk_id=chunk.id):
        version = job.version
        target = target_for(version)
        data = storage.read_bytes(storage.chunk_name(job.storage_prefix, index))
        started = time.perf_counter()
        try:
            scored = scoring.score_records(
                data,
                layout=_layout(job),
                first_row=chunk.first_row,
                predict=lambda x: predictors.predict(target=target, x=x, want_proba=job.want_proba, finite=False),
                sample_rows=int(_setting("RECORD_MAX_ROWS", 100)),
            )
        except InvalidInput as exc:
            fail_job(job_id=job_id, error=exc.detail, errors=exc.errors)
            return
        except scoring.ModelFailed as exc:
            fail_job(job_id=job_id, error=str(exc))
            return
        latency_ms = (time.perf_counter() - started) * 1000
        if _status_of(job_id) != Status.RUNNING:
            return  # cancelled while scoring: write nothing
        storage.write_bytes_once(storage.part_name(job.storage_prefix, index), scored.body)
        if _count_chunk(job=job, chunk=chunk, scored=scored, latency_ms=latency_ms) != Status.RUNNING:
            _discard_chunk(job, index)  # cancelled meanwhile: the discard task may already have run


def _count_chunk(*, job: BatchJob, chunk: BatchChunk, scored: scoring.ScoredChunk, latency_ms: float) -> str:
    """Add the chunk to the job's progress unless an earlier run did; returns the job's status."""
    with transaction.atomic():
        flipped = BatchChunk.objects.filter(id=chunk.id, is_done=False).update(
            is_done=True, rows_failed=scored.rows_failed, finished_at=timezone.now()
        )
        locked = BatchJob.objects.select_for_update().get(id=job.id)
        if flipped:
            locked.rows_done += chunk.rows
            locked.rows_failed += scored.rows_failed
            locked.chunks_done += 1
            locked.progressed_at = timezone.now()
            locked.save(update_fields=["rows_done", "rows_failed", "chunks_done", "progressed_at"])
            _record_predictions(job=job, chunk=chunk, scored=scored, latency_ms=latency_ms)
        if locked.status == Status.RUNNING and locked.chunks_total is not None and locked.chunks_done >= locked.chunks_total:
            _enqueue_on_commit("assemble", job.id)
    return locked.status


def _record_predictions(*, job: BatchJob, chunk: BatchChunk, scored: scoring.ScoredChunk, latency_ms: float) -> None:
    """One prediction record per chunk, for analytics; its id is fixed, so a second insert is ignored."""
    from inference.records import ingest_records

    # Through orjson and back: numpy values become plain ones and NaN becomes null, as on the online path.
    sample = orjson.loads(
        orjson.dumps({"in": scored.sample_inputs, "out": scored.sample_outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    )
    ingest_records(
        [
            {
                "id": f"batch_{job.id}_{chunk.index}",
                "ts": time.time(),
                "org": job.organization_id,
                "model": job.registered_model_id,
                "version": job.version_id,
                "exp": None,
                "variant": None,
                "key": job.api_key_id,
                "unit": None,
                "proto": "batch",
                "rows": scored.rows - scored.rows_failed,
                "lat": round(latency_ms, 3),
                "hit": False,
                "status": 200,
                "in": sample["in"],
                "out": sample["out"],
            }
        ]
    )


def _queue_assembly_if_complete(job_id: int) -> None:
    done = BatchJob.objects.filter(
        id=job_id, status=Status.RUNNING, chunks_total__isnull=False, chunks_done__gte=F("chunks_total")
    ).exists()
    if done:
        _enqueue_on_commit("assemble", job_id)


def requeue_stalled_jobs() -> int:
    """Send again what a dead worker held; returns how many jobs and chunks were sent again.

    The broker redelivers a dead worker's task only after its visibility timeout (an hour
    with Redis), and a broker that restarts empty loses queued tasks altogether. Two rules:
    a started chunk whose heartbeat is older than BATCH_CHUNK_STALL_SECONDS lost its worker
    and is sent again (minutes); a job that made no progress at all for BATCH_STALL_SECONDS
    (longer than any step's time limit: a split, an assembly or a task the broker lost) has
    every step not done sent again. Twins of a task that was merely slow are harmless. Run
    it from beat every minute or so.
    """
    count = _requeue_chunks_without_heartbeat()
    chunk_limit = float(_setting("BATCH_CHUNK_TIME_LIMIT_SECONDS", 900))
    file_limit = float(_setting("BATCH_FILE_TIME_LIMIT_SECONDS", 1800))
    now = timezone.now()
    stall = timezone.timedelta(seconds=float(_setting("BATCH_STALL_SECONDS", max(chunk_limit, file_limit) + 60)))
    stalled = BatchJob.objects.filter(status__in=ACTIVE, progressed_at__lt=now - stall)
    for job in stalled:
        with transaction.atomic():
            if not BatchJob.objects.filter(id=job.id, status__in=ACTIVE, progressed_at__lt=now - stall).update(progressed_at=now):
                continue  # it moved meanwhile
            count += 1
            if job.status == Status.QUEUED or job.chunks_total is None:
                _enqueue_on_commit("split", job.id)  # resumes: chunks already written are kept
            elif job.chunks_done >= job.chunks_total:
                _enqueue_on_commit("assemble", job.id)
            else:
                for index in BatchChunk.objects.filter(job=job, is_done=False).values_list("index", flat=True):
                    _enqueue_on_commit("chunk", job.id, index)
    return count


def _requeue_chunks_without_heartbeat() -> int:
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.BATCH_CHUNK_STALL_SECONDS)
    stalled = BatchChunk.objects.filter(job__status=Status.RUNNING, is_done=False, attempts__gt=0, heartbeat_at__lt=cutoff)
    count = 0
    for chunk_id, job_id, index in stalled.values_list("id", "job_id", "index"):
        with transaction.atomic():
            # Stamped now, so the chunk is not sent again at every run while it waits in the queue.
            if BatchChunk.objects.filter(id=chunk_id, is_done=False, heartbeat_at__lt=cutoff).update(heartbeat_at=timezone.now()):
                count += 1
                _enqueue_on_commit("chunk", job_id, index)
    return count


def assemble_result(*, job_id: int) -> None:
    """Write the header and every part, in order, as the result; then the job has succeeded."""
    job = BatchJob.objects.select_related("version").filter(id=job_id).first()
    if job is None or job.status != Status.RUNNING or job.chunks_total is None or job.chunks_done < job.chunks_total:
        return
    name = storage.result_name(job.storage_prefix, job.input_format)
    layout = _layout(job)

    def write(handle) -> None:
        if job.input_format == BatchJob.Format.CSV:
            handle.write(layout.header_line())
        for index in range(job.chunks_total):
            storage.copy_into(handle, storage.part_name(job.storage_prefix, index))

    storage.write_once(name, write)
    with transaction.atomic():
        moved = BatchJob.objects.filter(id=job_id, status=Status.RUNNING).update(
            status=Status.SUCCEEDED,
            finished_at=timezone.now(),
            result_bytes=storage.size(name),
            webhook_status=_pending_webhook(),
        )
        if moved:
            _after_end(job_id)
    if not moved and _status_of(job_id) != Status.SUCCEEDED:
        storage.delete(name)  # cancelled while assembling


def result_name(job: BatchJob) -> str:
    if job.status != Status.SUCCEEDED:
        raise Conflict(
            f"The job is {job.status}; its result is ready when the status is succeeded.",
            errors=[{"field": "status", "message": job.status}],
        )
    return storage.result_name(job.storage_prefix, job.input_format)


def _discard_chunk(job: BatchJob, index: int) -> None:
    storage.delete(storage.part_name(job.storage_prefix, index))
    storage.delete(storage.chunk_name(job.storage_prefix, index))


def discard_intermediate_files(*, job_id: int) -> None:
    """Delete an ended job's chunk inputs and parts; the input and the result stay."""
    job = BatchJob.objects.filter(id=job_id).first()
    if job is None or not job.is_finished:
        return
    storage.delete_folder(f"{job.storage_prefix}/chunks")
    storage.delete_folder(f"{job.storage_prefix}/parts")


def deliver_webhook(*, job_id: int, is_last_attempt: bool) -> None:
    """POST the signed completion event; raises DeliveryFailed when a later attempt may succeed."""
    job = BatchJob.objects.select_related("registered_model__organization", "version").filter(id=job_id).first()
    if job is None or not job.webhook_url or job.webhook_status != BatchJob.WebhookStatus.PENDING:
        return
    BatchJob.objects.filter(id=job_id).update(webhook_attempts=F("webhook_attempts") + 1)
    attempt = job.webhook_attempts + 1
    body = orjson.dumps(webhooks.event_document(job, result_path=result_path(job)))
    try:
        code = webhooks.post(
            job=job,
            body=body,
            event=f"batch_job.{job.status}",
            delivery_id=f"{job.id}-{attempt}",
        )
    except webhooks.DeliveryFailed as exc:
        gives_up = exc.is_permanent or is_last_attempt
        BatchJob.objects.filter(id=job_id).update(
            webhook_response_code=exc.status_code,
            webhook_last_error=str(exc)[:500],
            webhook_status=BatchJob.WebhookStatus.FAILED if gives_up else BatchJob.WebhookStatus.PENDING,
        )
        if not gives_up:
            raise
        return
    BatchJob.objects.filter(id=job_id).update(
        webhook_status=BatchJob.WebhookStatus.DELIVERED,
        webhook_response_code=code,
        webhook_last_error="",
        webhook_delivered_at=timezone.now(),
    )


def _enqueue_on_commit(step: str, job_id: int, index: int | None = None) -> None:
    """Send the task once the current transaction commits (at once outside one), so the worker reads committed rows."""
    transaction.on_commit(lambda: _enqueue(step, job_id, index))


def _enqueue(step: str, job_id: int, index: int | None = None) -> None:
    """Send a step's task. Time limits stay well under the broker's visibility timeout, past which a
    task still running would be delivered a second time."""
    from inference.batch import tasks

    chunk_limit = float(_setting("BATCH_CHUNK_TIME_LIMIT_SECONDS", 900))
    file_limit = float(_setting("BATCH_FILE_TIME_LIMIT_SECONDS", 1800))
    if step == "chunk":
        tasks.score_batch_chunk.apply_async((job_id, index), soft_time_limit=chunk_limit, time_limit=chunk_limit + 30)
    elif step == "split":
        tasks.split_batch_job.apply_async((job_id,), soft_time_limit=file_limit, time_limit=file_limit + 30)
    elif step == "assemble":
        tasks.assemble_batch_result.apply_async((job_id,), soft_time_limit=file_limit, time_limit=file_limit + 30)
    elif step == "webhook":
        if BatchJob.objects.filter(id=job_id, webhook_status=BatchJob.WebhookStatus.PENDING).exists():
            tasks.send_batch_webhook.apply_async((job_id,))
    elif step == "discard":
        tasks.discard_batch_files.apply_async((job_id,), countdown=5)
