"""An experiment's results per variant, from its prediction records and their feedback.

Read from the raw records (fresh, and the only place distinct units are known), so results
of an experiment older than the record retention window cover only the kept part.
Assignments are units (distinct unit ids) plus requests without a unit id, each of which
was assigned on its own; the sample-ratio check compares them with the weights. Feedback
counts for single-row predictions only (see analytics.services.quality). Accuracy compares
predicted labels with the labels sent as feedback (higher is better); MAE and RMSE compare
a regressor's predictions with the true values sent as feedback (lower is better), and a
regression experiment reports both whichever of them it compares on.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import connection
from django.db.models import Avg, Count, Q, Sum
from django.utils import timezone

from analytics.statistics.experiments import (
    compare_mae,
    compare_proportions,
    compare_rmse,
    mae_estimate,
    rmse_estimate,
    sample_ratio_mismatch,
    wilson_interval,
)
from analytics.statistics.feedback import is_number, labels_match
from inference.models import Experiment, Feedback, PredictionRecord

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
LOWER_IS_BETTER = frozenset({Experiment.Metric.MAE, Experiment.Metric.RMSE})


def srm_alarm_p_value() -> float:
    return float(getattr(settings, "ANALYTICS_SRM_P_VALUE", 0.001))


def records_of(experiment: Experiment):
    # Records carry the request's timestamp from the web host; the margin absorbs clock skew.
    return PredictionRecord.objects.filter(
        experiment_id=experiment.id,
        version_id__in=[v["version_id"] for v in experiment.variants],
        created_at__gte=experiment.created_at - timedelta(minutes=5),
    )


def _latency_percentiles(records) -> dict[str, tuple[float | None, float | None]]:
    if connection.vendor == "postgresql":
        sql, params = records.values_list("variant", "latency_ms").query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT variant, percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY latency_ms) FROM ({sql}) AS r "
                "GROUP BY variant",
                params,
            )
            return {variant: (values[0], values[1]) for variant, values in cursor.fetchall()}
    latencies = defaultdict(list)
    for variant, latency in records.values_list("variant", "latency_ms").iterator(chunk_size=10_000):
        latencies[variant].append(latency)
    return {variant: tuple(np.quantile(values, [0.5, 0.95]).tolist()) for variant, values in latencies.items()}


def _feedback_by_variant(experiment: Experiment, records) -> dict[str, list]:
    """Per variant: correctness (accuracy) or the error, prediction minus true value (mae, rmse), of each prediction."""
    feedback = Feedback.objects.filter(
        organization_id=experiment.registered_model.organization_id, prediction_id__in=records.values("prediction_id")
    )
    truths = {pid: (label, value) for pid, label, value in feedback.values_list("prediction_id", "label", "value")}
    outcomes: dict[str, list] = defaultdict(list)
    scored = records.filter(status__lt=400, rows=1, prediction_id__in=feedback.values("prediction_id")).values_list(
        "prediction_id", "variant", "outputs"
    )
    for prediction_id, variant, outputs in scored.iterator(chunk_size=5000):
        label, value = truths.get(prediction_id, (None, None))
        if experiment.metric == Experiment.Metric.ACCURACY:
            if label is not None and isinstance(outputs, list) and outputs:
                outcomes[variant].append(labels_match(label, outputs[0]))
        elif is_number(value) and isinstance(outputs, list) and outputs and is_number(outputs[0]):
            outcomes[variant].append(float(outputs[0]) - float(value))
    return outcomes


def experiment_results(*, experiment: Experiment) -> dict:
    records = records_of(experiment)
    traffic = {
        row["variant"]: row
        for row in records.values("variant").annotate(
            requests=Count("id"),
            rows=Sum("rows"),
            errors=Count("id", filter=Q(status__gte=400)),
            units=Count("unit_id", distinct=True, filter=~Q(unit_id="")),
            without_unit=Count("id", filter=Q(unit_id="")),
            latency_mean=Avg("latency_ms"),
        )
    }
    latencies = _latency_percentiles(records)
    outcomes = _feedback_by_variant(experiment, records)
    metric = Experiment.Metric(experiment.metric)
    variants = experiment.variants
    srm = sample_ratio_mismatch(
        [traffic.get(v["name"], {}).get("units", 0) + traffic.get(v["name"], {}).get("without_unit", 0) for v in variants],
        [v["weight"] for v in variants],
        alarm_p_value=srm_alarm_p_value(),
    )
    summaries = [_summary(outcomes.get(v["name"], []), metric=metric) for v in variants]
    control = summaries[0]
    results = []
    for index, (variant, summary) in enumerate(zip(variants, summaries, strict=True)):
        row = traffic.get(variant["name"], {})
        requests = row.get("requests", 0)
        p50, p95 = latencies.get(variant["name"], (None, None))
        enough = summary["n"] >= experiment.min_samples and control["n"] >= experiment.min_samples
        entry = {
            "name": variant["name"],
            "version": variant["version"],
            "weight": variant["weight"],
            "is_control": index == 0,
            "requests": requests,
            "rows": row.get("rows") or 0,
            "errors": row.get("errors", 0),
            "error_rate": row.get("errors", 0) / requests if requests else None,
            "units": row.get("units", 0),
            "requests_without_unit": row.get("without_unit", 0),
            "assignments": row.get("units", 0) + row.get("without_unit", 0),
            "expected_assignments": srm.expected[index],
            "latency_ms": {"mean": row.get("latency_mean"), "p50": p50, "p95": p95},
            "feedback": summary["n"],
            "metric": {"value": summary["estimate"].value, "low": summary["estimate"].low, "high": summary["estimate"].high},
            # Both error metrics of a regressor, whichever the experiment compares on.
            "error_metrics": {"mae": summary["mae"].value, "rmse": summary["rmse"].value} if metric in LOWER_IS_BETTER else None,
            "has_enough_samples": enough,
            "difference": None,
        }
        if index > 0:
            comparison = _compare(summary, control, metric=metric)
            entry["difference"] = {
                "value": comparison.difference,
                "low": comparison.low,
                "high": comparison.high,
                "p_value": comparison.p_value,
                "is_significant": bool(enough and comparison.p_value is not None and comparison.p_value < ALPHA),
            }
        results.append(entry)
    sign = -1 if metric in LOWER_IS_BETTER else 1
    better = [
        r for r in results[1:] if r["difference"] and r["difference"]["is_significant"] and sign * r["difference"]["value"] > 0
    ]
    leader = max(better, key=lambda r: sign * r["metric"]["value"])["version"] if better else None
    return {
        "experiment": experiment.id,
        "model": experiment.registered_model.full_name,
        "name": experiment.name,
        "status": experiment.status,
        "metric": experiment.metric,
        "is_lower_better": metric in LOWER_IS_BETTER,
        "min_samples": experiment.min_samples,
        "confidence": CONFIDENCE,
        "computed_at": timezone.now(),
        "variants": results,
        "sample_ratio": {
            "statistic": srm.statistic,
            "p_value": srm.p_value,
            "alarm_p_value": srm_alarm_p_value(),
            "is_mismatch": srm.is_mismatch,
        },
        "leader": leader,
    }


def _summary(outcomes: list, *, metric: Experiment.Metric) -> dict:
    n = len(outcomes)
    if metric == Experiment.Metric.ACCURACY:
        successes = int(sum(outcomes))
        return {"n": n, "successes": successes, "estimate": wilson_interval(successes, n, confidence=CONFIDENCE)}
    errors = np.asarray(outcomes, dtype=np.float64)
    mae, rmse = mae_estimate(errors, confidence=CONFIDENCE), rmse_estimate(errors, confidence=CONFIDENCE)
    return {"n": n, "errors": errors, "mae": mae, "rmse": rmse, "estimate": mae if metric == Experiment.Metric.MAE else rmse}


def _compare(summary: dict, control: dict, *, metric: Experiment.Metric):
    if metric == Experiment.Metric.ACCURACY:
        return compare_proportions(summary["successes"], summary["n"], control["successes"], control["n"], confidence=CONFIDENCE)
    compare = compare_mae if metric == Experiment.Metric.MAE else compare_rmse
    return compare(summary["errors"], control["errors"], confidence=CONFIDENCE)


def running_experiments() -> list[Experiment]:
    return list(
        Experiment.objects.filter(status=Experiment.Status.RUNNING, registered_model__deleted_at__isnull=True)
        .select_related("registered_model__organization")
        .order_by("-created_at")
    )
