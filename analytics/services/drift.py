"""Drift reports: a version's reference data against the inputs it served in a window.

The reference is the CSV uploaded with the version; without one, the inputs the version
served in its first ANALYTICS_DRIFT_REFERENCE_DAYS days (ending before the window starts).
The window is read from the prediction records, newest first, up to ANALYTICS_DRIFT_MAX_ROWS
rows. Output drift compares the predictions served in the window with the model's
predictions on the reference data (or the predictions of the reference days), which needs
no labels.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import orjson
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Min, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from accounts.models import Organization
from accounts.principals import Caller
from analytics.models import DriftReport
from analytics.services import alerts
from analytics.services.usage import hour_floor
from analytics.statistics import drift as stattests
from inference.models import PredictionRecord
from platform_site.errors import Conflict, InvalidInput, RateLimited
from registry import selectors as registry_selectors
from registry.models import ModelVersion, RegisteredModel

logger = logging.getLogger(__name__)


def max_rows() -> int:
    return int(getattr(settings, "ANALYTICS_DRIFT_MAX_ROWS", 200_000))


def default_window_hours() -> int:
    return int(getattr(settings, "ANALYTICS_DRIFT_WINDOW_HOURS", 24))


def share_threshold() -> float:
    return float(getattr(settings, "ANALYTICS_DRIFT_SHARE_THRESHOLD", 0.5))


@dataclass
class Sample:
    """Feature columns (signature order) and the predictions, with where they came from."""

    columns: list[np.ndarray | list]
    outputs: list
    rows: int
    source: str = ""
    start: datetime | None = None
    end: datetime | None = None
    note: str = ""


def feature_spec(version: ModelVersion) -> list[tuple[str, str]]:
    """(name, "num" | "cat") per input column, in signature order."""
    return [
        (column["name"], stattests.feature_kind(column.get("type", "double"))) for column in version.signature.get("inputs", [])
    ]


def _served(version: ModelVersion, start: datetime, end: datetime):
    return PredictionRecord.objects.filter(version=version, created_at__gte=start, created_at__lt=end, status__lt=400)


BLOCK_RECORDS = 5000


def _recorded_sample(queryset, spec: list[tuple[str, str]], *, limit: int) -> Sample:
    """The newest `limit` rows of inputs and outputs recorded by `queryset`, as columns.

    The JSON is fetched as text and parsed by orjson a block of records at a time (much
    faster than one json.loads per record), and each block becomes numpy columns at once,
    so only one block's Python objects are alive at a time.
    """
    texts = (
        queryset.exclude(inputs=None)
        .order_by("-created_at")
        .annotate(inputs_text=Cast("inputs", TextField()), outputs_text=Cast("outputs", TextField()))
        .values_list("inputs_text", "outputs_text")[:limit]
    )
    blocks: list[list] = []
    outputs: list = []
    rows = 0
    pending_in: list[str] = []
    pending_out: list[str] = []

    def flush() -> None:
        nonlocal rows
        if not pending_in:
            return
        block = [
            row for chunk in orjson.loads(("[" + ",".join(pending_in) + "]").encode()) if isinstance(chunk, list) for row in chunk
        ]
        block = block[: limit - rows]
        blocks.append(_columns(block, spec))
        rows += len(block)
        for chunk in orjson.loads(("[" + ",".join(pending_out) + "]").encode()):
            if isinstance(chunk, list):
                outputs.extend(chunk)
        pending_in.clear()
        pending_out.clear()

    for inputs_text, outputs_text in texts.iterator(chunk_size=BLOCK_RECORDS):
        pending_in.append(inputs_text)
        if outputs_text and outputs_text != "null":
            pending_out.append(outputs_text)
        if len(pending_in) >= BLOCK_RECORDS:
            flush()
            if rows >= limit:
                break
    flush()
    columns = [_concatenate([block[j] for block in blocks]) for j in range(len(spec))]
    return Sample(columns=columns, outputs=outputs[:limit], rows=rows)


def _concatenate(parts: list) -> np.ndarray | list:
    if parts and all(isinstance(part, np.ndarray) for part in parts):
        return np.concatenate(parts)
    return [value for part in parts for value in (part.tolist() if isinstance(part, np.ndarray) else part)]


def _columns(rows: list, spec: list[tuple[str, str]]) -> list:
    """Rows (lists in signature order, or objects by name) as one array or list per column."""
    names = [name for name, _ in spec]
    if rows and isinstance(rows[0], dict):
        rows = [[row.get(name) for name in names] if isinstance(row, dict) else row for row in rows]
    width = len(names)
    if all(kind == "num" for _, kind in spec):
        try:
            matrix = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError):  # ragged or mixed rows: column by column below
            matrix = None
        if matrix is not None and matrix.ndim == 2 and matrix.shape[1] == width:
            return [matrix[:, j].copy() for j in range(width)]
    return [[row[j] if isinstance(row, list) and j < len(row) else None for row in rows] for j in range(width)]


def window_sample(*, version: ModelVersion, start: datetime, end: datetime) -> Sample:
    sample = _recorded_sample(_served(version, start, end), feature_spec(version), limit=max_rows())
    sample.source, sample.start, sample.end = "window", start, end
    return sample


def reference_sample(*, version: ModelVersion, before: datetime) -> Sample:
    """The uploaded reference data, or the inputs of the version's first days before `before`."""
    if version.reference_data:
        return _uploaded_reference(version)
    days = int(getattr(settings, "ANALYTICS_DRIFT_REFERENCE_DAYS", 7))
    first = PredictionRecord.objects.filter(version=version, status__lt=400).aggregate(first=Min("created_at"))["first"]
    if first is None or first >= before:
        raise _no_reference(version)
    end = min(first + timedelta(days=days), before)
    sample = _recorded_sample(_served(version, first, end), feature_spec(version), limit=max_rows())
    sample.source, sample.start, sample.end = DriftReport.ReferenceSource.FIRST_DAYS, first, end
    return sample


def _uploaded_reference(version: ModelVersion) -> Sample:
    import pandas as pd

    spec = feature_spec(version)
    names = [name for name, _ in spec]
    with version.reference_data.open("rb") as handle:
        frame = pd.read_csv(handle, nrows=max_rows())
    if not set(names) <= set(frame.columns) and len(frame.columns) >= len(names):
        frame = frame.iloc[:, : len(names)]
        frame.columns = names  # an unnamed signature (f0, f1, ...) takes the CSV's columns by position
    columns = []
    for name, kind in spec:
        if name not in frame.columns:
            columns.append([])
        elif kind == "num":
            columns.append(pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64))
        else:
            columns.append(frame[name].where(frame[name].notna(), None).tolist())
    outputs, note = _reference_predictions(version, frame, names)
    return Sample(columns=columns, outputs=outputs, rows=len(frame), source=DriftReport.ReferenceSource.REFERENCE_DATA, note=note)


def _reference_predictions(version: ModelVersion, frame, names: list[str]) -> tuple[list, str]:
    """The model's predictions on the reference rows (through the worker's model cache)."""
    from inference import predictors
    from inference.routing import target_for
    from inference.validation import to_model_input

    try:
        target = target_for(version)
        rows = frame[names].astype(object).where(frame[names].notna(), None).values.tolist()
        predictions, _ = predictors.predict(target=target, x=to_model_input(rows, target.spec), want_proba=False, finite=False)
    except Exception as exc:  # a reference the model cannot score still has feature drift
        logger.warning("could not predict on the reference data of version %s: %s", version.id, exc)
        return [], f"the model could not score the reference data: {exc}"[:300]
    return np.asarray(predictions).tolist(), ""


def output_columns(outputs: list) -> list[list]:
    """The predictions as one list per output: a multi-output model's rows are lists of its outputs."""
    width = max((len(row) for row in outputs if isinstance(row, list)), default=0)
    if not width:
        return [outputs]
    return [[row[i] if isinstance(row, list) and i < len(row) else None for row in outputs] for i in range(width)]


def _most_drifted(outputs: list[stattests.FeatureDrift]) -> stattests.FeatureDrift:
    """The output that moved most: drifted first, then the smallest p-value or the largest distance."""
    tested = [o for o in outputs if o.test is not None] or outputs
    return min(tested, key=lambda o: (not o.drifted, o.p_value if o.p_value is not None else -(o.statistic or 0.0)))


def compare(
    *, version: ModelVersion, reference: Sample, current: Sample
) -> tuple[list[stattests.FeatureDrift], stattests.FeatureDrift | None]:
    """Each feature's drift, and the prediction's when both samples have predictions.

    A multi-output model's outputs are compared one by one (`prediction[0]`, ...); the
    prediction's result is the output that moved most, with every output's in `outputs`.
    """
    spec = feature_spec(version)
    jobs = [(name, kind, reference.columns[j], current.columns[j]) for j, (name, kind) in enumerate(spec)]
    if reference.outputs and current.outputs:
        kind = "num" if version.task == "regression" else "cat"
        reference_outputs, current_outputs = output_columns(reference.outputs), output_columns(current.outputs)
        if len(reference_outputs) == len(current_outputs) == 1:
            jobs.append(("prediction", kind, reference_outputs[0], current_outputs[0]))
        else:
            # Records of one version have one width; should a sample hold a wider output, the
            # outputs both samples have are compared.
            for i, (ref, cur) in enumerate(zip(reference_outputs, current_outputs, strict=False)):
                jobs.append((f"prediction[{i}]", kind, ref, cur))
    # numpy and scipy sort without the GIL: features are compared on every core.
    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda job: stattests.compare_feature(*job), jobs))
    features, outputs = results[: len(spec)], results[len(spec) :]
    if len(outputs) <= 1:
        return features, outputs[0] if outputs else None
    prediction = _most_drifted(outputs)
    prediction.outputs = [output.as_dict() for output in outputs]
    return features, prediction


def _check_can_report(*, version: ModelVersion, window_start: datetime, window_end: datetime) -> None:
    """The cheap checks (indexed lookups, no rows read): a request that cannot make a report is a 400 at once."""
    if window_end <= window_start:
        raise InvalidInput(
            "The window must end after it starts.", errors=[{"field": "window_hours", "message": "must be positive"}]
        )
    if not version.signature.get("inputs"):
        raise InvalidInput(
            f"Version {version.number} has no input signature to compare.",
            errors=[{"field": "version", "message": "no signature"}],
        )
    if not _served(version, window_start, window_end).exclude(inputs=None).exists():
        raise _no_traffic(version, window_start, window_end)
    if (
        not version.reference_data
        and not PredictionRecord.objects.filter(version=version, status__lt=400, created_at__lt=window_start).exists()
    ):
        raise _no_reference(version)


def _no_traffic(version: ModelVersion, start: datetime, end: datetime) -> InvalidInput:
    return InvalidInput(
        f"Version {version.number} of {version.registered_model.full_name} served no recorded predictions between "
        f"{start.isoformat()} and {end.isoformat()}; there is nothing to compare.",
        errors=[{"field": "window_hours", "message": "no traffic in the window"}],
    )


def _no_reference(version: ModelVersion) -> InvalidInput:
    return InvalidInput(
        f"Version {version.number} has no reference data: upload a reference CSV with the version, "
        f"or run the report on a window that starts after the version's first predictions.",
        errors=[{"field": "version", "message": "no reference data and no traffic before the window"}],
    )


def measure_drift(*, version: ModelVersion, window_start: datetime, window_end: datetime) -> dict:
    """The report's result fields: reads the window and the reference (up to ANALYTICS_DRIFT_MAX_ROWS
    rows each) and compares them. Worker work: seconds for a busy version."""
    started = time.perf_counter()
    _check_can_report(version=version, window_start=window_start, window_end=window_end)
    current = window_sample(version=version, start=window_start, end=window_end)
    if current.rows == 0:
        raise _no_traffic(version, window_start, window_end)
    reference = reference_sample(version=version, before=window_start)
    threshold = share_threshold()
    features, prediction = compare(version=version, reference=reference, current=current)
    n_features, drifted, share, is_drift = stattests.dataset_verdict(features, share_threshold=threshold)
    return {
        "reference_source": reference.source,
        "reference_start": reference.start,
        "reference_end": reference.end,
        "reference_rows": reference.rows,
        "current_rows": current.rows,
        "drift_share_threshold": threshold,
        "n_features": n_features,
        "drifted_features": drifted,
        "share_drifted": share,
        "is_drift": is_drift,
        "features": [feature.as_dict() for feature in features],
        "prediction": prediction.as_dict() if prediction else ({"note": reference.note} if reference.note else {}),
        "seconds": time.perf_counter() - started,
    }


def run_drift_report(
    *,
    version: ModelVersion,
    window_start: datetime,
    window_end: datetime,
    trigger: str,
    caller: Caller | None = None,
) -> DriftReport:
    """Compute, store and (on drift) alert, here and now (the worker's path: the beat's reports,
    and tests); a window without traffic is a 400 naming it."""
    result = measure_drift(version=version, window_start=window_start, window_end=window_end)
    model = version.registered_model
    now = timezone.now()
    with transaction.atomic():
        report = DriftReport.objects.create(
            organization_id=model.organization_id,
            registered_model=model,
            version=version,
            trigger=trigger,
            status=DriftReport.Status.DONE,
            window_start=window_start,
            window_end=window_end,
            created_by=caller.person if caller else None,
            started_at=now,
            finished_at=now,
            **result,
        )
        if report.is_drift:
            alerts.alert_on_drift(report=report, caller=caller)
    return report


def reports_per_hour() -> int:
    return int(settings.ANALYTICS_DRIFT_REPORTS_PER_HOUR)


def request_report(
    *, caller: Caller | None, model: RegisteredModel, version_number: int | None, window_hours: int | None, trigger: str
) -> DriftReport:
    """A report asked for by a person or program, stored `pending` and computed by the worker.

    The named version (the production one by default) over the last `window_hours`
    (ANALYTICS_DRIFT_WINDOW_HOURS by default). Refused with 409 while the model has a report
    pending or running (naming it), and with 429 past ANALYTICS_DRIFT_REPORTS_PER_HOUR reports
    of the organization in the last hour (operators' admin reports are not counted, nor limited).
    """
    if version_number is None:
        if model.production_version is None:
            raise InvalidInput(
                f"{model.full_name} has no production version; name the version to check.",
                errors=[{"field": "version", "message": "required when no version is in production"}],
            )
        version_number = model.production_version.number
    version = registry_selectors.version_of(model=model, number=version_number)
    window_end = timezone.now()
    window_start = window_end - timedelta(hours=window_hours or default_window_hours())
    _check_can_report(version=version, window_start=window_start, window_end=window_end)
    with transaction.atomic():
        # The organization's row serializes its members' requests: the count and the
        # one-at-a-time check below cannot both pass for two requests at once.
        Organization.objects.select_for_update().filter(pk=model.organization_id).first()
        _fail_stale_reports(model=model)
        unfinished = DriftReport.objects.filter(registered_model=model, status__in=DriftReport.UNFINISHED).first()
        if unfinished is not None:
            raise Conflict(
                f"Drift report {unfinished.pk} of {model.full_name} is still {unfinished.status}; "
                f"poll /api/v1/drift-reports/{unfinished.pk} and ask again when it is done.",
                report_id=unfinished.pk,
                report_status=unfinished.status,
            )
        if trigger != DriftReport.Trigger.ADMIN:
            _check_hourly_limit(organization_id=model.organization_id)
        report = DriftReport.objects.create(
            organization_id=model.organization_id,
            registered_model=model,
            version=version,
            trigger=trigger,
            status=DriftReport.Status.PENDING,
            window_start=window_start,
            window_end=window_end,
            drift_share_threshold=share_threshold(),
            created_by=caller.person if caller else None,
        )
        transaction.on_commit(lambda: _enqueue(report.pk))
    return report


def _check_hourly_limit(*, organization_id: int) -> None:
    limit = reports_per_hour()
    since = timezone.now() - timedelta(hours=1)
    counted = DriftReport.objects.filter(organization_id=organization_id, created_at__gte=since).exclude(
        trigger__in=[DriftReport.Trigger.SCHEDULE, DriftReport.Trigger.ADMIN]
    )
    times = list(counted.order_by("-created_at").values_list("created_at", flat=True)[:limit])
    if len(times) >= limit:
        # The oldest of the last `limit` reports leaves the hour first.
        retry_after = max(1, math.ceil((times[-1] + timedelta(hours=1) - timezone.now()).total_seconds()))
        raise RateLimited(
            f"This organization ran {limit} drift reports in the last hour, its limit; try again in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )


def _fail_stale_reports(*, model: RegisteredModel) -> None:
    """A report pending or running past ANALYTICS_DRIFT_STALE_SECONDS (its task lost with a broker,
    say) is failed, so that it does not hold the model's one place for ever."""
    stale = timezone.now() - timedelta(seconds=settings.ANALYTICS_DRIFT_STALE_SECONDS)
    DriftReport.objects.filter(registered_model=model, status__in=DriftReport.UNFINISHED, created_at__lt=stale).update(
        status=DriftReport.Status.FAILED, error="The worker did not finish this report in time.", finished_at=timezone.now()
    )


def _enqueue(report_id: int) -> None:
    """Send the report's task; its time limit stays under the broker's visibility timeout, past
    which a task still running would be delivered a second time."""
    from analytics import tasks

    limit = float(settings.ANALYTICS_DRIFT_TIME_LIMIT_SECONDS)
    tasks.compute_drift_report.apply_async((report_id,), soft_time_limit=limit, time_limit=limit + 30)


def compute_report(*, report_id: int) -> DriftReport | None:
    """Compute a pending report (the worker's side of `request_report`); idempotent.

    A report already done or failed is left as it is; one `running` is computed again (its
    worker died and the broker delivered the task anew). Bad input found now (the records
    were pruned meanwhile) fails the report with the message a request would have had.
    """
    claimed = DriftReport.objects.filter(pk=report_id, status__in=DriftReport.UNFINISHED).update(
        status=DriftReport.Status.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        return None
    report = DriftReport.objects.select_related("organization", "registered_model__organization", "version", "created_by").get(
        pk=report_id
    )
    try:
        result = measure_drift(version=report.version, window_start=report.window_start, window_end=report.window_end)
    except InvalidInput as exc:
        return _finish_failed(report, exc.detail)
    except SoftTimeLimitExceeded:
        return _finish_failed(
            report, f"The report took longer than {settings.ANALYTICS_DRIFT_TIME_LIMIT_SECONDS:g} s; ask for a shorter window."
        )
    except Exception:
        logger.exception("drift report %s failed", report_id)
        _finish_failed(report, "The report could not be computed; the operators have the details.")
        raise
    with transaction.atomic():
        for name, value in result.items():
            setattr(report, name, value)
        report.status, report.error, report.finished_at = DriftReport.Status.DONE, "", timezone.now()
        report.save()
        if report.is_drift:
            alerts.alert_on_drift(report=report, caller=Caller(user=report.created_by) if report.created_by else None)
    return report


def _finish_failed(report: DriftReport, message: str) -> DriftReport:
    DriftReport.objects.filter(pk=report.pk).update(
        status=DriftReport.Status.FAILED, error=message[:500], finished_at=timezone.now()
    )
    report.refresh_from_db()
    return report


def run_scheduled_report(*, version_id: int, window_start: datetime, window_end: datetime) -> DriftReport | None:
    """The beat's report for one production version and window; None when there is nothing to do."""
    version = ModelVersion.objects.select_related("registered_model__organization").filter(id=version_id).first()
    if version is None:
        return None
    if DriftReport.objects.filter(
        version=version, window_start=window_start, window_end=window_end, trigger=DriftReport.Trigger.SCHEDULE
    ).exists():
        return None
    try:
        return run_drift_report(
            version=version, window_start=window_start, window_end=window_end, trigger=DriftReport.Trigger.SCHEDULE
        )
    except InvalidInput as exc:
        logger.info("no scheduled drift report for version %s: %s", version_id, exc.detail)
    except IntegrityError:  # the same window, stored by a twin of this task
        pass
    return None


def scheduled_windows(*, now: datetime | None = None) -> list[tuple[int, datetime, datetime]]:
    """(version id, start, end) for every production version that served traffic in the last window."""
    end = hour_floor(now or timezone.now())
    start = end - timedelta(hours=default_window_hours())
    versions = RegisteredModel.objects.filter(deleted_at__isnull=True, production_version__isnull=False).values_list(
        "production_version_id", flat=True
    )
    done = set(
        DriftReport.objects.filter(trigger=DriftReport.Trigger.SCHEDULE, window_start=start, window_end=end).values_list(
            "version_id", flat=True
        )
    )
    # One indexed EXISTS per version (version, created_at), rather than a scan of the window.
    return [
        (version_id, start, end)
        for version_id in sorted(set(versions) - done)
        if PredictionRecord.objects.filter(version_id=version_id, created_at__gte=start, created_at__lt=end).exists()
    ]
