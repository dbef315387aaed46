"""Replays: the inputs production served, predicted again by another version, and compared.

The rows are the newest prediction records of the production version (optionally within a
window), up to the number asked for and ANALYTICS_REPLAY_MAX_ROWS; only records the model's
organization owns are read. Each batch of records (ANALYTICS_REPLAY_BATCH_ROWS rows) is
checked against each version's signature and predicted by both versions through
`inference.predictors.predict`, the path predictions take after their checks: the web's own
arithmetic for a linear model, the organization's runner otherwise. Nothing else on the
serving path is touched: no rate limit or quota is counted, nothing is read from or written
to the prediction cache, no prediction is recorded (so usage and experiments do not see it).
The two versions are timed on the same batches, in alternating order so that neither always
runs on a warmer machine.

A record whose rows one version refuses (its signature) or fails on (the model raised, its
runner stopped) is counted as a failure of that version, with the first few messages kept;
a batch that fails is predicted again record by record so that the failure is pinned to the
records that cause it. Feedback is matched to single-row records only, as live quality does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Organization
from accounts.principals import Caller
from analytics.models import Replay
from analytics.statistics import replay as stats
from inference import predictors
from inference.models import Feedback, PredictionRecord
from inference.routing import VersionTarget, target_for
from inference.validation import check_rows, normalise_rows, to_model_input
from platform_site.errors import Conflict, InvalidInput, ModelhostError
from registry import selectors as registry_selectors
from registry.models import ModelVersion, RegisteredModel

logger = logging.getLogger(__name__)

# Failures kept in the report, per kind (enough to see what goes wrong, bounded in size).
FIRST_FAILURES = 5


@dataclass
class Recorded:
    """One prediction record's rows, as production was asked for them."""

    prediction_id: str
    inputs: Any
    rows: int
    truth_label: Any = None
    truth_value: float | None = None
    has_truth: bool = False


@dataclass
class Answers:
    """One version's answers on a batch of records: per record, (predictions, probabilities) or an error."""

    results: list[tuple[list, list | None] | ModelhostError]
    # Milliseconds of the one predict call on the whole batch; None when it had to be split.
    elapsed_ms: float | None
    # Indexes of the records in that call (the ones the signature accepted).
    predicted: tuple[int, ...]
    # When the call had to be split: milliseconds of each record's own call (None where refused or failed).
    each_ms: list[float | None] = field(default_factory=list)


@dataclass
class Tally:
    """What the replay has seen so far."""

    production_labels: list = field(default_factory=list)
    candidate_labels: list = field(default_factory=list)
    production_proba: list = field(default_factory=list)
    candidate_proba: list = field(default_factory=list)
    truths: list = field(default_factory=list)
    truth_production: list = field(default_factory=list)
    truth_candidate: list = field(default_factory=list)
    failures: dict = field(default_factory=lambda: {"candidate_only": 0, "production_only": 0, "both": 0})
    first_failures: dict = field(default_factory=lambda: {"candidate_only": [], "production_only": []})
    production_ms: list = field(default_factory=list)
    candidate_ms: list = field(default_factory=list)
    timed_rows: int = 0
    has_proba: bool = True


# ---------------------------------------------------------------------------- asking for one


def default_rows() -> int:
    return settings.ANALYTICS_REPLAY_DEFAULT_ROWS


def max_rows() -> int:
    return settings.ANALYTICS_REPLAY_MAX_ROWS


def _check_can_replay(
    *, model: RegisteredModel, version: ModelVersion, window_start: datetime | None, window_end: datetime | None
) -> ModelVersion:
    """The production version to compare with; a request that cannot make a replay is a 400 at once."""
    production = model.production_version
    if production is None:
        raise InvalidInput(
            f"{model.full_name} has no production version: a replay compares a version with the traffic production served.",
            errors=[{"field": "version", "message": "no production version"}],
        )
    if production.id == version.id:
        raise InvalidInput(
            f"Version {version.number} is the production version; replay another version against it.",
            errors=[{"field": "version", "message": "is in production"}],
        )
    if production.task != version.task:
        raise InvalidInput(
            f"Version {version.number} is a {version.task} model and production (version {production.number}) a "
            f"{production.task} one; "
            "their answers cannot be compared.",
            errors=[{"field": "version", "message": "task differs from production's"}],
        )
    if not _records(model=model, baseline=production, window_start=window_start, window_end=window_end).exists():
        where = f" between {window_start.isoformat()} and {window_end.isoformat()}" if window_start and window_end else ""
        raise InvalidInput(
            f"Production (version {production.number}) of {model.full_name} has no recorded predictions{where} to replay.",
            errors=[{"field": "window_hours" if window_start else "version", "message": "no recorded traffic to replay"}],
        )
    return production


def request_replay(
    *, caller: Caller | None, model: RegisteredModel, version_number: int, rows: int | None, window_hours: int | None
) -> Replay:
    """A replay of production's newest recorded inputs against version `version_number`, stored
    `pending` and computed by the worker.

    `rows` (ANALYTICS_REPLAY_DEFAULT_ROWS by default, at most ANALYTICS_REPLAY_MAX_ROWS) of the
    last `window_hours` when given. Refused with 409 (naming it) while the model has a replay
    pending or running.
    """
    version = registry_selectors.version_of(model=model, number=version_number)
    limit = settings.ANALYTICS_REPLAY_MAX_ROWS
    rows = rows or settings.ANALYTICS_REPLAY_DEFAULT_ROWS
    if rows > limit:
        raise InvalidInput(
            f"A replay reads at most {limit} rows; ask for fewer.", errors=[{"field": "rows", "message": f"more than {limit}"}]
        )
    window_end = timezone.now() if window_hours else None
    window_start = window_end - timedelta(hours=window_hours) if window_end else None
    production = _check_can_replay(model=model, version=version, window_start=window_start, window_end=window_end)
    with transaction.atomic():
        # The organization's row serializes its members' requests: two cannot both pass the check below.
        Organization.objects.select_for_update().filter(pk=model.organization_id).first()
        _fail_stale_replays(model=model)
        unfinished = Replay.objects.filter(registered_model=model, status__in=Replay.UNFINISHED).first()
        if unfinished is not None:
            raise Conflict(
                f"Replay {unfinished.pk} of {model.full_name} is still {unfinished.status}; one replay runs at a time per model. "
                f"Poll /api/v1/models/{model.full_name}/versions/{unfinished.version.number}/replays/{unfinished.pk} and "
                "ask again when it is done.",
                replay_id=unfinished.pk,
                replay_status=unfinished.status,
            )
        replay = Replay.objects.create(
            organization_id=model.organization_id,
            registered_model=model,
            version=version,
            baseline_version=production,
            rows_requested=rows,
            window_start=window_start,
            window_end=window_end,
            created_by=caller.person if caller else None,
        )
        transaction.on_commit(lambda: _enqueue(replay.pk))
    return replay


def _fail_stale_replays(*, model: RegisteredModel) -> None:
    """A replay unfinished past ANALYTICS_REPLAY_STALE_SECONDS (its task lost with a broker) is
    failed, so that it does not hold the model's one place for ever."""
    stale = timezone.now() - timedelta(seconds=settings.ANALYTICS_REPLAY_STALE_SECONDS)
    Replay.objects.filter(registered_model=model, status__in=Replay.UNFINISHED, created_at__lt=stale).update(
        status=Replay.Status.FAILED, error="The worker did not finish this replay in time.", finished_at=timezone.now()
    )


def _enqueue(replay_id: int) -> None:
    """Send the replay's task; its time limit stays under the broker's visibility timeout."""
    from analytics import tasks

    limit = float(settings.ANALYTICS_REPLAY_TIME_LIMIT_SECONDS)
    tasks.compute_replay.apply_async((replay_id,), soft_time_limit=limit, time_limit=limit + 30)


# ---------------------------------------------------------------------------- the worker's side


def compute_replay(*, replay_id: int) -> Replay | None:
    """Compute a pending replay (the worker's side of `request_replay`); idempotent.

    A replay done or failed is left as it is; one `running` is computed again from the start
    (its worker died and the broker delivered the task anew).
    """
    claimed = Replay.objects.filter(pk=replay_id, status__in=Replay.UNFINISHED).update(
        status=Replay.Status.RUNNING, started_at=timezone.now(), rows_done=0
    )
    if not claimed:
        return None
    replay = Replay.objects.select_related("registered_model__organization", "version", "baseline_version").get(pk=replay_id)

    def progress(done: int, total: int) -> None:
        Replay.objects.filter(pk=replay_id).update(rows_done=done, rows_total=total)

    try:
        report = measure_replay(replay=replay, on_progress=progress)
    except InvalidInput as exc:
        return _finish_failed(replay, exc.detail)
    except ModelhostError as exc:  # a version that cannot be loaded at all (its runner refuses it, none is up)
        return _finish_failed(replay, f"{exc.title}: {exc.detail}")
    except SoftTimeLimitExceeded:
        return _finish_failed(
            replay, f"The replay took longer than {settings.ANALYTICS_REPLAY_TIME_LIMIT_SECONDS:g} s; ask for fewer rows."
        )
    except Exception:
        logger.exception("replay %s failed", replay_id)
        _finish_failed(replay, "The replay could not be computed; the operators have the details.")
        raise
    Replay.objects.filter(pk=replay_id).update(
        status=Replay.Status.DONE,
        error="",
        rows_total=report["rows_total"],
        rows_done=report["rows_total"],
        rows_compared=report["rows_compared"],
        agreement=report["agreement"],
        report=report,
        seconds=report["seconds"],
        finished_at=timezone.now(),
    )
    replay.refresh_from_db()
    return replay


def _finish_failed(replay: Replay, message: str) -> Replay:
    Replay.objects.filter(pk=replay.pk).update(status=Replay.Status.FAILED, error=message[:500], finished_at=timezone.now())
    replay.refresh_from_db()
    return replay


def _records(*, model: RegisteredModel, baseline: ModelVersion, window_start: datetime | None, window_end: datetime | None):
    records = PredictionRecord.objects.filter(
        organization_id=model.organization_id, registered_model=model, version=baseline, status__lt=400
    ).exclude(inputs=None)
    if window_start is not None:
        records = records.filter(created_at__gte=window_start, created_at__lt=window_end)
    return records


def recorded_rows(*, replay: Replay) -> list[Recorded]:
    """The newest records of the baseline, up to `rows_requested` rows, with their feedback."""
    texts = (
        _records(
            model=replay.registered_model,
            baseline=replay.baseline_version,
            window_start=replay.window_start,
            window_end=replay.window_end,
        )
        .order_by("-created_at", "-id")
        .values_list("prediction_id", "inputs")
    )
    recorded: list[Recorded] = []
    rows = 0
    for prediction_id, inputs in texts.iterator(chunk_size=2000):
        if isinstance(inputs, dict):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            continue
        if not isinstance(inputs[0], (list, dict)):
            inputs = [inputs]  # one flat row, as the native path accepts it
        inputs = inputs[: replay.rows_requested - rows]
        recorded.append(Recorded(prediction_id=prediction_id, inputs=inputs, rows=len(inputs)))
        rows += len(inputs)
        if rows >= replay.rows_requested:
            break
    recorded.reverse()  # oldest first, as they were served
    single = {r.prediction_id: r for r in recorded if r.rows == 1}
    ids = list(single)
    for start in range(0, len(ids), 5000):
        truths = Feedback.objects.filter(organization_id=replay.organization_id, prediction_id__in=ids[start : start + 5000])
        for prediction_id, label, value in truths.values_list("prediction_id", "label", "value"):
            record = single[prediction_id]
            record.truth_label, record.truth_value, record.has_truth = label, value, label is not None or value is not None
    return recorded


def record_batches(recorded: list[Recorded], *, batch_rows: int) -> list[list[Recorded]]:
    """Consecutive records in batches of at most `batch_rows` rows (a larger record alone)."""
    batches: list[list[Recorded]] = [[]]
    size = 0
    for record in recorded:
        if batches[-1] and size + record.rows > batch_rows:
            batches.append([])
            size = 0
        batches[-1].append(record)
        size += record.rows
    return [batch for batch in batches if batch]


def _as_list(values: Any) -> list:
    return np.asarray(values).tolist()


def _predict_records(target: VersionTarget, rows_per_record: list[list], *, want_proba: bool) -> tuple[list, list | None]:
    rows = [row for record_rows in rows_per_record for row in record_rows]
    predictions, probabilities = predictors.predict(
        target=target, x=to_model_input(rows, target.spec), want_proba=want_proba, finite=target.spec.forbids_missing
    )
    return _as_list(predictions), (_as_list(probabilities) if probabilities is not None else None)


def answer_batch(target: VersionTarget, batch: list[Recorded], *, want_proba: bool) -> Answers:
    """`target`'s answers on each record of `batch`: checked against its signature, predicted in
    one call, record by record when that call fails."""
    results: list = [None] * len(batch)
    accepted: list[int] = []
    rows_of: dict[int, list] = {}
    for i, record in enumerate(batch):
        try:
            rows = normalise_rows(record.inputs, target.spec)
            check_rows(rows, target.spec)
        except ModelhostError as exc:
            results[i] = exc
            continue
        accepted.append(i)
        rows_of[i] = rows
    if not accepted:
        return Answers(results=results, elapsed_ms=None, predicted=())
    started = time.perf_counter()
    try:
        predictions, probabilities = _predict_records(target, [rows_of[i] for i in accepted], want_proba=want_proba)
    except ModelhostError:
        each_ms: list[float | None] = [None] * len(batch)
        for i in accepted:
            started = time.perf_counter()
            try:
                results[i] = _predict_records(target, [rows_of[i]], want_proba=want_proba)
            except ModelhostError as exc:
                results[i] = exc
            else:
                each_ms[i] = (time.perf_counter() - started) * 1000
        return Answers(results=results, elapsed_ms=None, predicted=(), each_ms=each_ms)
    elapsed_ms = (time.perf_counter() - started) * 1000
    offset = 0
    for i in accepted:
        n = len(rows_of[i])
        results[i] = (predictions[offset : offset + n], probabilities[offset : offset + n] if probabilities is not None else None)
        offset += n
    return Answers(results=results, elapsed_ms=elapsed_ms, predicted=tuple(accepted))


def _note_failure(tally: Tally, kind: str, record: Recorded, error: ModelhostError) -> None:
    tally.failures[kind] += record.rows
    if kind in tally.first_failures and len(tally.first_failures[kind]) < FIRST_FAILURES:
        tally.first_failures[kind].append(
            {
                "prediction_id": record.prediction_id,
                "rows": record.rows,
                "code": error.code,
                "message": str(error.detail)[:300],
                "errors": error.errors[:3],
            }
        )


def _tally_batch(tally: Tally, batch: list[Recorded], production: Answers, candidate: Answers) -> None:
    for record, answer_p, answer_c in zip(batch, production.results, candidate.results, strict=True):
        failed_p, failed_c = isinstance(answer_p, ModelhostError), isinstance(answer_c, ModelhostError)
        if failed_p and failed_c:
            tally.failures["both"] += record.rows
            continue
        if failed_c:
            _note_failure(tally, "candidate_only", record, answer_c)
            continue
        if failed_p:
            _note_failure(tally, "production_only", record, answer_p)
            continue
        (labels_p, proba_p), (labels_c, proba_c) = answer_p, answer_c
        tally.production_labels.extend(labels_p)
        tally.candidate_labels.extend(labels_c)
        if proba_p is None or proba_c is None:
            tally.has_proba = False
        elif tally.has_proba:
            tally.production_proba.extend(proba_p)
            tally.candidate_proba.extend(proba_c)
        if record.has_truth:
            tally.truths.append(record.truth_value if record.truth_value is not None else record.truth_label)
            tally.truth_production.append(labels_p[0])
            tally.truth_candidate.append(labels_c[0])
    if production.elapsed_ms is not None and candidate.elapsed_ms is not None and production.predicted == candidate.predicted:
        tally.production_ms.append(production.elapsed_ms)
        tally.candidate_ms.append(candidate.elapsed_ms)
        tally.timed_rows += sum(batch[i].rows for i in production.predicted)


def measure_replay(*, replay: Replay, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """The replay's report: reads the records, predicts them on both versions, compares.

    {"task", "rows_total", "rows_compared", "agreement", "agreement_detail" (labels and the
    confusion between the versions, or the distribution of the differences), "probability_shift"
    (mean absolute difference per class, or null), "failures" (rows failed on the candidate
    only, production only, both, with the first few errors), "latency" (both versions on the
    same batches), "feedback" (each version's metric on the rows with feedback and the test of
    the difference, or null), "seconds"}.
    """
    started = time.perf_counter()
    model = replay.registered_model
    recorded = recorded_rows(replay=replay)
    total = sum(record.rows for record in recorded)
    if total == 0:
        raise InvalidInput(
            f"Production (version {replay.baseline_version.number}) of {model.full_name} has no recorded inputs left to replay."
        )
    production_target = target_for(replay.baseline_version, org_id=model.organization_id)
    candidate_target = target_for(replay.version, org_id=model.organization_id)
    is_classifier = replay.version.task == "classification"
    want_proba = is_classifier and production_target.has_proba and candidate_target.has_proba
    # Loading each version into its runner is not part of either's latency.
    predictors.warm(target=production_target)
    predictors.warm(target=candidate_target)
    tally = Tally(has_proba=want_proba)
    done = 0
    for number, batch in enumerate(record_batches(recorded, batch_rows=settings.ANALYTICS_REPLAY_BATCH_ROWS)):
        if number % 2 == 0:
            production = answer_batch(production_target, batch, want_proba=want_proba)
            candidate = answer_batch(candidate_target, batch, want_proba=want_proba)
        else:
            candidate = answer_batch(candidate_target, batch, want_proba=want_proba)
            production = answer_batch(production_target, batch, want_proba=want_proba)
        _tally_batch(tally, batch, production, candidate)
        done += sum(record.rows for record in batch)
        if on_progress is not None:
            on_progress(done, total)
    return build_report(
        version=replay.version,
        baseline=replay.baseline_version,
        tally=tally,
        total=total,
        is_classifier=is_classifier,
        seconds=time.perf_counter() - started,
    )


def build_report(
    *, version: ModelVersion, baseline: ModelVersion, tally: Tally, total: int, is_classifier: bool, seconds: float
) -> dict:
    """A replay's report (measure_replay says what it holds) from what a Tally saw; live mirrors build theirs here too."""
    compared = len(tally.production_labels)
    if is_classifier:
        detail = stats.agreement_of_labels(tally.production_labels, tally.candidate_labels)
    else:
        detail = stats.differences_of_values(
            np.asarray(tally.production_labels, dtype=np.float64),
            np.asarray(tally.candidate_labels, dtype=np.float64),
            rtol=float(settings.ANALYTICS_REPLAY_REGRESSION_RTOL),
        )
    shift = None
    if is_classifier and tally.has_proba and tally.production_proba:
        shift = stats.probability_shift(
            np.asarray(tally.production_proba), baseline.classes or [], np.asarray(tally.candidate_proba), version.classes or []
        )
    feedback = None
    if tally.truths:
        if is_classifier:
            feedback = stats.paired_accuracy(tally.truths, tally.truth_production, tally.truth_candidate)
        else:
            feedback = stats.paired_errors(tally.truths, tally.truth_production, tally.truth_candidate)
    return {
        "task": "classification" if is_classifier else "regression",
        "version": version.number,
        "baseline_version": baseline.number,
        "rows_total": total,
        "rows_compared": compared,
        "agreement": detail.get("agreement"),
        "agreement_detail": detail,
        "probability_shift": shift,
        "failures": {**tally.failures, "first": tally.first_failures},
        "latency": stats.latency_summary(tally.production_ms, tally.candidate_ms, rows=tally.timed_rows),
        "feedback": feedback,
        "seconds": seconds,
    }
