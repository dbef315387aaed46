"""Live mirrors, the worker's side: the records the hot path flagged, predicted again by the candidate.

The hot path only draws (a mirror's `fraction`, read from the cached route) and flags the
request's prediction record with the mirror's id; nothing else happens before the answer
leaves. Beat sends `analytics.mirror_predictions` every ANALYTICS_MIRROR_SECONDS, which sends
one `analytics.mirror_one` task per running mirror; each reads the flagged records the worker has not mirrored yet (only those the
mirror's organization owns, of its model, served by its baseline version), predicts their
inputs with the candidate through `analytics.services.replays.answer_batch` (the replay's path:
the candidate's signature check, then `inference.predictors.predict`, no limit, cache, usage or
record), and stores both answers per record. Production is not predicted again: its answer is
the one the caller got, as recorded.

Cost is bounded three ways: the fraction (at most one half, checked at start), at most
`max_rows_per_hour` rows in any hour (records past it are counted, not predicted), and
ANALYTICS_MIRROR_MAX_ROWS rows in all, where the mirror stops itself with the report kept.

The report is the replay's (`replays.build_report`) computed again from the mirror's stored
rows after each run that added some, with the feedback that exists by then; it has no
probability shift (production's probabilities are not recorded) and its latency compares the
candidate's predict time with production's recorded request time.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from analytics.models import MirroredPrediction, MirrorReport
from analytics.services.replays import FIRST_FAILURES, Recorded, Tally, answer_batch, build_report, record_batches
from inference import predictors
from inference.mirrors import services as mirror_services
from inference.models import Feedback, Mirror, PredictionRecord
from inference.routing import target_for
from platform_site.errors import ModelhostError

logger = logging.getLogger(__name__)

# A running mirror's report is computed again at least this often, so feedback sent on rows it
# mirrored earlier counts even while no new row comes.
REPORT_REFRESH_SECONDS = 60


def running_mirror_ids() -> list[int]:
    """The mirrors beat sends the worker to: one task each, so that a slow candidate delays only its own."""
    return list(Mirror.objects.filter(status=Mirror.Status.RUNNING).values_list("id", flat=True))


def _report_row(mirror: Mirror) -> MirrorReport:
    row, _ = MirrorReport.objects.get_or_create(
        mirror=mirror,
        defaults={"organization_id": mirror.registered_model.organization_id, "registered_model_id": mirror.registered_model_id},
    )
    return row


def _as_rows(inputs) -> list | None:
    """A record's inputs as the list of rows production was asked for (as replays read them)."""
    if isinstance(inputs, dict):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        return None
    if not isinstance(inputs[0], (list, dict)):
        inputs = [inputs]  # one flat row, as the native path accepts it
    return inputs


def mirror_once(*, mirror_id: int) -> int:
    """Predict the mirror's flagged records not mirrored yet, within its hourly cap; idempotent.

    Two runs never work on one mirror at once: the second skips it (its report row is locked).
    """
    mirror = Mirror.objects.select_related("registered_model__organization", "version", "baseline_version").get(pk=mirror_id)
    _report_row(mirror)
    with transaction.atomic():
        report = MirrorReport.objects.select_for_update(skip_locked=True).filter(mirror=mirror).first()
        if report is None or mirror.status != Mirror.Status.RUNNING:
            return 0
        model = mirror.registered_model
        records = list(
            PredictionRecord.objects.filter(
                mirror_id=mirror.id,
                organization_id=model.organization_id,
                registered_model_id=model.id,
                version_id=mirror.baseline_version_id,
                status__lt=400,
                id__gt=report.settled_record_id,
            )
            .exclude(inputs=None)
            .order_by("id")
            .values_list("id", "prediction_id", "created_at", "inputs", "outputs", "latency_ms")[
                : settings.ANALYTICS_MIRROR_RUN_ROWS
            ]
        )
        seen = set(
            MirroredPrediction.objects.filter(mirror=mirror, prediction_id__in=[r[1] for r in records]).values_list(
                "prediction_id", flat=True
            )
        )
        hour_ago = timezone.now() - timedelta(hours=1)
        used = MirroredPrediction.objects.filter(mirror=mirror, mirrored_at__gte=hour_ago).aggregate(n=Sum("rows"))["n"] or 0
        budget = mirror.max_rows_per_hour - used
        chosen: list[tuple[Recorded, tuple]] = []
        over_cap = 0
        for record in records:
            record_id, prediction_id, _, inputs, outputs, _ = record
            rows = _as_rows(inputs)
            if prediction_id in seen or rows is None or not isinstance(outputs, list):
                continue
            rows = rows[: len(outputs)]  # both were capped at RECORD_MAX_ROWS when recorded
            if len(rows) > budget:
                if record_id > report.last_record_id:  # a record read again (trailing window) is counted once
                    over_cap += len(rows)
                continue
            budget -= len(rows)
            chosen.append((Recorded(prediction_id=prediction_id, inputs=rows, rows=len(rows)), record))
        stored = _predict_and_store(mirror, chosen) if chosen else 0
        logger.info(
            "mirror %s: %d flagged records read, %d rows predicted, %d rows over the hourly cap",
            mirror.id,
            len(records),
            stored,
            over_cap,
        )
        report.settled_record_id = report.last_record_id
        report.last_record_id = max([report.last_record_id, *(r[0] for r in records)])
        report.rows_mirrored += stored
        report.rows_over_cap += over_cap
        if stored or (report.rows_mirrored and _is_stale(report)):
            _refresh_report(mirror, report)  # stale: feedback sent since counts too
        report.updated_at = timezone.now()
        report.save()
        if report.rows_mirrored >= settings.ANALYTICS_MIRROR_MAX_ROWS:
            mirror_services.stop_mirror(caller=None, model=model, reason=f"collected {report.rows_mirrored} rows")
    return stored


def _predict_and_store(mirror: Mirror, chosen: list[tuple[Recorded, tuple]]) -> int:
    """The candidate's answers on the chosen records, in batches, stored beside production's."""
    target = target_for(mirror.version, org_id=mirror.registered_model.organization_id)
    try:
        predictors.warm(target=target)  # loading it is not part of its latency
    except ModelhostError:
        pass  # each batch below fails the same way and is counted
    objects = []
    pairs = iter(chosen)
    for batch in record_batches([recorded for recorded, _ in chosen], batch_rows=settings.ANALYTICS_REPLAY_BATCH_ROWS):
        chosen_batch = [next(pairs) for _ in batch]
        size = sum(recorded.rows for recorded in batch)
        answers = answer_batch(target, batch, want_proba=False)
        for index, ((recorded, record), result) in enumerate(zip(chosen_batch, answers.results, strict=True)):
            _, prediction_id, served_at, _, outputs, latency_ms = record
            row = MirroredPrediction(
                mirror=mirror,
                organization_id=mirror.registered_model.organization_id,
                prediction_id=prediction_id,
                served_at=served_at,
                rows=recorded.rows,
                production=outputs[: recorded.rows],
                production_ms=latency_ms,
            )
            if isinstance(result, ModelhostError):
                row.error_code, row.error_message = result.code, str(result.detail)[:300]
            else:
                row.candidate = result[0]
                if answers.elapsed_ms is not None:
                    row.candidate_ms = answers.elapsed_ms * recorded.rows / size
                elif answers.each_ms:  # the batch was split around failing records: each timed alone
                    row.candidate_ms = answers.each_ms[index]
            objects.append(row)
    MirroredPrediction.objects.bulk_create(objects, ignore_conflicts=True)
    return sum(o.rows for o in objects)


def _is_stale(report: MirrorReport) -> bool:
    computed = report.report.get("computed_at")
    return computed is None or time.time() - computed > REPORT_REFRESH_SECONDS


def _refresh_report(mirror: Mirror, report: MirrorReport) -> None:
    started = time.perf_counter()
    is_classifier = mirror.version.task == "classification"
    tally = Tally(has_proba=False)
    single: dict[str, tuple[list, list]] = {}
    candidate_ms: list[float] = []
    production_ms: list[float] = []
    total = 0
    rows = MirroredPrediction.objects.filter(mirror=mirror, organization_id=report.organization_id).order_by("served_at", "id")
    for prediction_id, n, production, candidate, code, message, c_ms, p_ms in rows.values_list(
        "prediction_id", "rows", "production", "candidate", "error_code", "error_message", "candidate_ms", "production_ms"
    ).iterator(chunk_size=2000):
        total += n
        if code:
            tally.failures["candidate_only"] += n
            if len(tally.first_failures["candidate_only"]) < FIRST_FAILURES:
                tally.first_failures["candidate_only"].append(
                    {"prediction_id": prediction_id, "rows": n, "code": code, "message": message, "errors": []}
                )
            continue
        tally.production_labels.extend(production)
        tally.candidate_labels.extend(candidate)
        if n == 1:
            single[prediction_id] = (production, candidate)
        if c_ms is not None:
            candidate_ms.append(c_ms * 1000 / n)
        if p_ms is not None:
            production_ms.append(p_ms * 1000 / n)
    ids = list(single)
    for start in range(0, len(ids), 5000):
        truths = Feedback.objects.filter(organization_id=report.organization_id, prediction_id__in=ids[start : start + 5000])
        for prediction_id, label, value in truths.values_list("prediction_id", "label", "value"):
            if label is None and value is None:
                continue
            production, candidate = single[prediction_id]
            tally.truths.append(value if value is not None else label)
            tally.truth_production.append(production[0])
            tally.truth_candidate.append(candidate[0])
    built = build_report(
        version=mirror.version,
        baseline=mirror.baseline_version,
        tally=tally,
        total=total,
        is_classifier=is_classifier,
        seconds=time.perf_counter() - started,
    )
    built["latency"] = _latency(candidate_ms, production_ms)
    built["mirror"] = {
        "fraction": mirror.fraction,
        "max_rows_per_hour": mirror.max_rows_per_hour,
        "rows_over_cap": report.rows_over_cap,
    }
    built["computed_at"] = time.time()
    report.report = built
    report.rows_compared = built["rows_compared"]
    report.agreement = built["agreement"]


def _latency(candidate_per_1000: list[float], production_per_1000: list[float]) -> dict:
    """Milliseconds per 1000 rows, per record: the candidate's predict call on the worker, and
    production's whole request as served (authentication, limits, cache and the predict)."""

    def summary(values: list[float]) -> dict | None:
        if not values:
            return None
        p50, p95 = np.quantile(np.asarray(values, dtype=np.float64), [0.5, 0.95])
        return {"records": len(values), "p50_per_1000_rows_ms": float(p50), "p95_per_1000_rows_ms": float(p95)}

    return {
        "kind": "mirror",
        "candidate_predict": summary(candidate_per_1000),
        "production_request": summary(production_per_1000),
    }
