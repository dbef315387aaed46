"""Comparing two versions' answers on the same rows (a replay), and their quality on feedback.

Pairs, not samples: each row was answered by both versions, so the tests are the paired
ones. Accuracy on feedback: each version's Wilson interval, and McNemar's exact test on the
rows where exactly one of them is right (the binomial test of those discordant pairs against
1/2, which is what statsmodels' `mcnemar(exact=True)` computes; scipy's binomtest gives it
without another dependency), with the Wald interval of the paired difference. Regression
error on feedback: each version's mean absolute error with its t interval, and the paired
t-test of the absolute errors (scipy's ttest_rel) with its interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from analytics.statistics.experiments import t_interval, wilson_interval
from analytics.statistics.feedback import labels_match

# scipy is imported inside the functions that use it: imported here it cost every Django process
# (migrate, beat, each worker) a second or more of start-up, through the admin's imports.


def _label_key(label: Any) -> str:
    """A label as text for JSON keys and sorting; `true` and `1` stay apart."""
    if isinstance(label, bool):
        return "true" if label else "false"
    return str(label)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def agreement_of_labels(production: Sequence, candidate: Sequence) -> dict:
    """Share of rows with the same label, and the confusion between the versions.

    `confusion.counts[i][j]` is the number of rows production labelled `labels[i]` and the
    candidate `labels[j]`; the diagonal is the agreement.
    """
    keys_p = [_label_key(label) for label in production]
    keys_c = [_label_key(label) for label in candidate]
    labels = sorted(set(keys_p) | set(keys_c), key=lambda key: (len(key), key))
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(counts, ([index[k] for k in keys_p], [index[k] for k in keys_c]), 1)
    same = int(np.trace(counts))
    n = len(keys_p)
    return {
        "rows": n,
        "agreeing": same,
        "agreement": same / n if n else None,
        "confusion": {"labels": labels, "counts": counts.tolist()},
    }


def differences_of_values(production: np.ndarray, candidate: np.ndarray, *, rtol: float) -> dict:
    """Candidate minus production: mean signed difference, absolute and relative quantiles, and
    the share of rows within `rtol` of production (the regression agreement)."""
    production = np.asarray(production, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    n = len(production)
    if n == 0:
        return {"rows": 0, "agreeing": 0, "agreement": None, "rtol": rtol}
    difference = candidate - production
    absolute = np.abs(difference)
    scale = np.abs(production)
    # A relative difference against a production answer of 0 has no meaning: those rows are left out of it.
    relative = absolute[scale > 0] / scale[scale > 0]
    agreeing = int(np.count_nonzero(absolute <= rtol * scale))

    def quantiles(values: np.ndarray) -> dict:
        if len(values) == 0:
            return {"mean": None, "p50": None, "p95": None, "p99": None, "max": None}
        p50, p95, p99 = np.quantile(values, [0.5, 0.95, 0.99])
        return {
            "mean": _finite(values.mean()),
            "p50": _finite(p50),
            "p95": _finite(p95),
            "p99": _finite(p99),
            "max": _finite(values.max()),
        }

    return {
        "rows": n,
        "agreeing": agreeing,
        "agreement": agreeing / n,
        "rtol": rtol,
        "mean": _finite(difference.mean()),
        "absolute": quantiles(absolute),
        "relative": {**quantiles(relative), "rows": int(len(relative))},
        "histogram": _histogram(difference),
    }


def _histogram(values: np.ndarray, *, bins: int = 20) -> dict:
    """Counts of the signed differences in `bins` equal bins (the report's chart)."""
    low, high = float(values.min()), float(values.max())
    if low == high:
        return {"edges": [low, high], "counts": [int(len(values))]}
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def probability_shift(
    production: np.ndarray, production_classes: Sequence, candidate: np.ndarray, candidate_classes: Sequence
) -> dict[str, float]:
    """Mean absolute difference of each class's probability between the versions, by class.

    Classes are matched by label; a class one version does not know has probability 0 there.
    """
    production = np.asarray(production, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    keys_p = [_label_key(c) for c in production_classes]
    keys_c = [_label_key(c) for c in candidate_classes]
    shift = {}
    for key in sorted(set(keys_p) | set(keys_c), key=lambda k: (len(k), k)):
        p = production[:, keys_p.index(key)] if key in keys_p else np.zeros(len(production))
        c = candidate[:, keys_c.index(key)] if key in keys_c else np.zeros(len(candidate))
        shift[key] = float(np.mean(np.abs(c - p))) if len(p) else 0.0
    return shift


def _estimate(estimate) -> dict:
    return {"value": estimate.value, "low": estimate.low, "high": estimate.high}


def paired_accuracy(truth: Sequence, production: Sequence, candidate: Sequence, *, confidence: float = 0.95) -> dict:
    """Each version's accuracy on the labelled rows, and McNemar's exact test of the difference."""
    from scipy import stats

    right_p = np.array([labels_match(t, p) for t, p in zip(truth, production, strict=True)], dtype=bool)
    right_c = np.array([labels_match(t, c) for t, c in zip(truth, candidate, strict=True)], dtype=bool)
    n = len(right_p)
    only_candidate = int(np.count_nonzero(right_c & ~right_p))
    only_production = int(np.count_nonzero(right_p & ~right_c))
    discordant = only_candidate + only_production
    if n == 0:
        return {"metric": "accuracy", "rows": 0}
    difference = (only_candidate - only_production) / n
    # Wald interval of a paired difference of proportions (Agresti, Categorical Data Analysis, 10.1).
    half = (
        float(stats.norm.ppf(0.5 + confidence / 2))
        * math.sqrt(max(discordant - (only_candidate - only_production) ** 2 / n, 0.0))
        / n
    )
    p_value = float(stats.binomtest(only_candidate, discordant, 0.5).pvalue) if discordant else 1.0
    return {
        "metric": "accuracy",
        "rows": n,
        "production": _estimate(wilson_interval(int(right_p.sum()), n, confidence=confidence)),
        "candidate": _estimate(wilson_interval(int(right_c.sum()), n, confidence=confidence)),
        "difference": {"value": difference, "low": difference - half, "high": difference + half, "p_value": p_value},
        "test": "mcnemar_exact",
        "only_candidate_right": only_candidate,
        "only_production_right": only_production,
    }


def paired_errors(
    truth: Sequence[float], production: Sequence[float], candidate: Sequence[float], *, confidence: float = 0.95
) -> dict:
    """Each version's MAE (t interval) and RMSE on the rows with a true value, and the paired
    t-test of the absolute errors (candidate minus production)."""
    from scipy import stats

    truth_array = np.asarray(truth, dtype=np.float64)
    error_p = np.abs(np.asarray(production, dtype=np.float64) - truth_array)
    error_c = np.abs(np.asarray(candidate, dtype=np.float64) - truth_array)
    n = len(truth_array)
    if n == 0:
        return {"metric": "mae", "rows": 0}

    def mae(errors: np.ndarray) -> dict:
        std = float(errors.std(ddof=1)) if n > 1 else math.nan
        return {
            **_estimate(t_interval(mean=float(errors.mean()), std=std, n=n, confidence=confidence)),
            "rmse": float(np.sqrt(np.mean(errors**2))),
        }

    gap = error_c - error_p
    difference: dict = {"value": float(gap.mean()), "low": None, "high": None, "p_value": None}
    if n > 1:
        spread = float(gap.std(ddof=1))
        if spread == 0:
            difference.update(low=difference["value"], high=difference["value"], p_value=1.0 if difference["value"] == 0 else 0.0)
        else:
            interval = t_interval(mean=difference["value"], std=spread, n=n, confidence=confidence)
            difference.update(low=interval.low, high=interval.high, p_value=float(stats.ttest_rel(error_c, error_p).pvalue))
    return {
        "metric": "mae",
        "rows": n,
        "production": mae(error_p),
        "candidate": mae(error_c),
        "difference": difference,
        "test": "paired_t",
    }


def latency_summary(production_ms: Sequence[float], candidate_ms: Sequence[float], *, rows: int) -> dict:
    """Each version's time on the same batches (total, per batch p50/p95, per 1000 rows) and their ratio."""

    def summary(values: Sequence[float]) -> dict:
        array = np.asarray(values, dtype=np.float64)
        if len(array) == 0:
            return {"total_ms": None, "mean_ms": None, "p50_ms": None, "p95_ms": None, "per_1000_rows_ms": None}
        p50, p95 = np.quantile(array, [0.5, 0.95])
        total = float(array.sum())
        return {
            "total_ms": total,
            "mean_ms": float(array.mean()),
            "p50_ms": float(p50),
            "p95_ms": float(p95),
            "per_1000_rows_ms": total * 1000 / rows if rows else None,
        }

    production, candidate = summary(production_ms), summary(candidate_ms)
    ratio = candidate["total_ms"] / production["total_ms"] if production["total_ms"] else None
    return {"batches": len(production_ms), "rows": rows, "production": production, "candidate": candidate, "ratio": ratio}
