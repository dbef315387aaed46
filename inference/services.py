"""Writes for inference outside the hot path: feedback.

Feedback runs outside any transaction of its own until the single write at the end: to find a
prediction still on its way it drains the record stream, and that drain commits on its own
(inference.records), so a refused feedback cannot roll back other tenants' records.
"""

from __future__ import annotations

from typing import Any

from accounts.principals import Caller
from accounts.selectors import organizations_for_caller
from inference import records
from inference.models import Feedback, PredictionRecord
from platform_site.errors import InvalidInput, NotFound, PermissionDenied

# An outlier detector's predict: -1 an outlier, 1 an inlier; feedback says which a row truly was.
OUTLIER_LABELS = [-1, 1]
_KIND = {"classification": "a classifier", "outlier_detection": "an outlier detector"}


def _find_prediction(*, caller: Caller, prediction_id: str) -> PredictionRecord | None:
    orgs = organizations_for_caller(caller=caller)
    return (
        PredictionRecord.objects.select_related("version")
        .filter(prediction_id=prediction_id, organization__in=orgs, status=200)
        .first()
    )


def is_class_label(label: Any, classes: list) -> bool:
    """Whether label is one of the classes; a boolean matches only a boolean (True is not the class 1)."""
    if isinstance(label, bool):
        return any(isinstance(c, bool) and c == label for c in classes)
    return any(not isinstance(c, bool) and c == label for c in classes)


def record_feedback(
    *, caller: Caller, prediction_id: str, label: Any = None, value: Any = None, has_label: bool, has_value: bool
) -> tuple[Feedback, bool]:
    """Store the truth for a prediction of the caller's organization; returns (feedback, created)."""
    if caller.api_key is not None and not (caller.api_key.has_scope("predict") or caller.api_key.has_scope("write")):
        raise PermissionDenied("Sending feedback needs the 'predict' or 'write' scope.")
    if has_label == has_value:
        raise InvalidInput(
            "Send exactly one of label (classification, outlier detection) or value (regression).",
            errors=[{"field": "label", "message": "send label or value"}],
        )
    record = _find_prediction(caller=caller, prediction_id=prediction_id)
    if record is None:
        # The record may still be in the stream: move it to the database now and look again.
        records.drain_stream()
        records.flush_local_buffer()
        record = _find_prediction(caller=caller, prediction_id=prediction_id)
    if record is None:
        raise NotFound()
    task = record.version.task
    if task == "clustering":
        # A cluster id is the model's own name for a group: there is no true id to compare it with.
        raise InvalidInput(
            "This prediction came from a clusterer: its cluster ids have no true value to compare with, so feedback is "
            "not recorded.",
            errors=[{"field": "label", "message": "clusterers take no feedback"}],
        )
    if has_value:
        if task != "regression":
            raise InvalidInput(
                f"This prediction came from {_KIND[task]}: send label, not value.",
                errors=[{"field": "value", "message": f"send label for {_KIND[task]}"}],
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput("value must be a number.", errors=[{"field": "value", "message": "expected a number"}])
    if has_label:
        if task == "regression":
            raise InvalidInput(
                "This prediction came from a regressor: send value, not label.",
                errors=[{"field": "label", "message": "send value for a regressor"}],
            )
        if not isinstance(label, (str, int, float, bool)):
            raise InvalidInput(
                "label must be a string, number or boolean.", errors=[{"field": "label", "message": "expected a scalar"}]
            )
        if task == "outlier_detection" and (isinstance(label, bool) or label not in OUTLIER_LABELS):
            raise InvalidInput(
                f"{label!r} is not an outlier detector's label: send -1 (an outlier) or 1 (an inlier).",
                errors=[{"field": "label", "message": "expected -1 or 1"}],
            )
        classes = record.version.classes
        if task == "classification" and classes is not None and not is_class_label(label, classes):
            raise InvalidInput(
                f"{label!r} is not one of the model's classes {classes}.",
                errors=[{"field": "label", "message": "not one of the model's classes"}],
            )
    feedback, created = Feedback.objects.update_or_create(  # atomic on its own
        organization_id=record.organization_id,
        prediction_id=prediction_id,
        defaults={
            "version_id": record.version_id,
            "label": label if has_label else None,
            "value": float(value) if has_value else None,
        },
    )
    return feedback, created
