"""Per-row feature contributions (`parameters.explain`): the reference data they compare with,
and the answer's shape.

The explainers live in inference.runners.explainers and run in the organization's runner,
beside the model (tenant code never runs here). The one exception is a plain linear model the
web predicts itself: its decomposition, ``coef * (x - mean)``, is arithmetic on the verified
coefficients (data), computed here by the same function the runner uses.

The reference data (the CSV uploaded with a version) gives the linear decomposition its mean
and the sampling explainer its background rows. It is read from model storage the first time a
process explains a version, and kept (EXPLAIN_REFERENCE_CACHE versions per process, least
recently used first): the column means over its first EXPLAIN_REFERENCE_MAX_ROWS rows and a
fixed sample of EXPLAIN_BACKGROUND_ROWS complete rows.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings

from inference.runners.explainers import linear_contributions
from platform_site.errors import ExplanationUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """What the explainers compare a row with: column means (numeric signatures) and sample rows."""

    mean: np.ndarray | None
    background: Any  # the model's input type (array or frame), or None
    rows: Any = None  # a larger sample (EXPLAIN_MAX_ROWS) for global importance, same type


_NONE = Reference(mean=None, background=None)
_cache: OrderedDict[tuple[int, str], Reference] = OrderedDict()
_lock = threading.Lock()


def reference_for(target) -> Reference:
    """The version's reference data as the explainers use it (read once per process, then kept)."""
    if not target.reference_name:
        return _NONE
    key = (target.id, target.reference_name)
    with _lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    reference = _read_reference(target)
    with _lock:
        _cache[key] = reference
        while len(_cache) > settings.EXPLAIN_REFERENCE_CACHE:
            _cache.popitem(last=False)
    return reference


def forget_references() -> None:
    with _lock:
        _cache.clear()


def _read_reference(target) -> Reference:
    import pandas as pd

    from inference.validation import NUMERIC, to_model_input
    from registry.storage import model_storage

    spec = target.spec
    names = spec.names
    try:
        with model_storage().open(target.reference_name, "rb") as handle:
            frame = pd.read_csv(handle, nrows=settings.EXPLAIN_REFERENCE_MAX_ROWS)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        logger.warning("version %s: its reference data cannot be read for explanations: %s", target.id, exc)
        return _NONE
    if not set(names) <= set(frame.columns):
        if len(frame.columns) < len(names):
            return _NONE
        frame = frame.iloc[:, : len(names)]
        frame.columns = names  # an unnamed signature (f0, f1, ...) takes the CSV's columns by position
    frame = frame[names]
    for column in spec.columns:
        if column.type in NUMERIC:
            frame[column.name] = pd.to_numeric(frame[column.name], errors="coerce")
    mean = None
    if spec.all_numeric:
        mean = frame.to_numpy(dtype=np.float64)
        mean = np.nanmean(mean, axis=0) if np.isfinite(mean).any(axis=0).all() else None
    complete = frame.dropna()
    if complete.empty:
        return Reference(mean=mean, background=None)
    sample = complete.sample(
        n=min(max(settings.EXPLAIN_MAX_ROWS, settings.EXPLAIN_BACKGROUND_ROWS), len(complete)), random_state=0
    )
    rows = sample.astype(object).values.tolist()
    rows = [[value.item() if hasattr(value, "item") else value for value in row] for row in rows]
    try:
        sampled = to_model_input(rows, spec)
    except (ValueError, TypeError) as exc:
        logger.warning("version %s: its reference rows do not fit its signature: %s", target.id, exc)
        return Reference(mean=mean, background=None)
    return Reference(mean=mean, background=sampled[: settings.EXPLAIN_BACKGROUND_ROWS], rows=sampled)


def linear_explanation(*, spec: dict, x: np.ndarray, predictions: np.ndarray, mean: np.ndarray | None) -> dict:
    """The exact decomposition of a linear model the web predicts (its verified ``linear_spec``)."""
    if mean is None:
        raise ExplanationUnavailable(
            "The linear decomposition is taken against the mean of the version's reference data, and this version has none: "
            "upload the version again with reference_data (a CSV of training-like rows)."
        )
    coef = np.asarray(spec["coef"], dtype=np.float64)
    intercept = np.asarray(spec["intercept"], dtype=np.float64)
    class_index = None
    if spec["kind"] == "classifier":
        # scikit-learn's classes_ are sorted (np.unique): a label's index is its sorted position.
        class_index = np.searchsorted(np.asarray(spec["classes"]), predictions)
    values, base = linear_contributions(coef=coef, intercept=intercept, x=x, mean=mean, class_index=class_index)
    output = "decision function of the predicted class" if class_index is not None else "predicted value"
    return {"method": "linear", "output": output, "values": values, "base": base}


def response_body(*, explanation: dict, features: list[str], predictions: Any, classifier: bool) -> tuple[dict, list[dict]]:
    """``(explainer, explanations)``: the method and what it explains, then one object per row,
    ``{"class"?, "base_value", "value", "contributions": {feature: value}}`` in the signature's order."""
    values = np.asarray(explanation["values"], dtype=np.float64)
    base = np.asarray(explanation["base"], dtype=np.float64)
    labels = predictions.tolist() if isinstance(predictions, np.ndarray) else list(predictions)
    rows = []
    for index in range(values.shape[0]):
        row: dict[str, Any] = {}
        if classifier:
            row["class"] = labels[index]
        row["base_value"] = float(base[index])
        row["value"] = float(base[index] + values[index].sum())
        row["contributions"] = dict(zip(features, values[index].tolist(), strict=True))
        rows.append(row)
    return {"method": explanation["method"], "output": explanation["output"]}, rows


def to_cache(explanation: dict) -> dict:
    return {
        "method": explanation["method"],
        "output": explanation["output"],
        "values": explanation["values"],
        "base": explanation["base"],
    }


def from_cache(entry: dict) -> dict:
    return {
        "method": entry["method"],
        "output": entry["output"],
        "values": np.asarray(entry["values"], dtype=np.float64),
        "base": np.asarray(entry["base"], dtype=np.float64),
    }


def global_importance(*, version) -> dict:
    """The mean |contribution| of each feature over a sample of the version's reference data.

    ``{"method", "output", "rows", "features": [{"name", "importance"}] (largest first)}``,
    computed where predictions are (the runner, or here for a linear model the web predicts)
    and cached for EXPLAIN_IMPORTANCE_CACHE_SECONDS per version and reference data (both
    immutable). Raises ExplanationUnavailable when there is no reference data or no explainer.
    """
    from django.core.cache import cache

    from inference import predictors
    from inference.routing import target_for
    from platform_site.errors import PayloadTooLarge

    target = target_for(version)
    key = f"mh:importance:{version.id}:{target.reference_name}"
    found = cache.get(key)
    if found is not None:
        return found
    reference = reference_for(target)
    if reference.rows is None:
        raise ExplanationUnavailable(
            "Global importance is measured on the version's reference data, and this version has none: "
            "upload the version again with reference_data (a CSV of training-like rows)."
        )
    rows = reference.rows
    try:
        predictions, _, explanation = predictors.predict_explained(
            target=target, x=rows, want_proba=False, finite=target.spec.forbids_missing
        )
    except PayloadTooLarge:  # the sampling explainer: fewer rows
        rows = rows[: settings.EXPLAIN_SAMPLING_MAX_ROWS]
        predictions, _, explanation = predictors.predict_explained(
            target=target, x=rows, want_proba=False, finite=target.spec.forbids_missing
        )
    strength = np.abs(explanation["values"]).mean(axis=0)
    features = [
        {"name": name, "importance": float(value)} for name, value in zip(target.spec.names, strength.tolist(), strict=True)
    ]
    features.sort(key=lambda item: item["importance"], reverse=True)
    result = {"method": explanation["method"], "output": explanation["output"], "rows": len(predictions), "features": features}
    cache.set(key, result, settings.EXPLAIN_IMPORTANCE_CACHE_SECONDS)
    return result
