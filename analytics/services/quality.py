"""Live quality per version per day, from feedback joined to the predictions it is about.

Each run recomputes, whole, the last ANALYTICS_QUALITY_LOOKBACK_DAYS days (by the day the
prediction was served), so late and corrected feedback land in the right day; older days
keep their rows. Feedback names one prediction id and carries one truth, so it is compared
with single-row predictions only: for a request of several rows it is not clear which row
the truth is about, and such feedback is not counted.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from analytics.models import QualityRollup
from analytics.services.usage import day_floor
from analytics.statistics.feedback import is_number, labels_match
from inference.models import Feedback, PredictionRecord
from registry.models import ModelVersion


def lookback_days() -> int:
    return int(getattr(settings, "ANALYTICS_QUALITY_LOOKBACK_DAYS", 7))


def roll_up_quality(*, now: datetime | None = None) -> int:
    """Recompute the quality rows of the lookback days; returns how many rows were written."""
    now = now or timezone.now()
    start = day_floor(now - timedelta(days=lookback_days()))
    recent_feedback = Feedback.objects.filter(created_at__gte=start)
    truths = {
        (org_id, prediction_id): (label, value)
        for prediction_id, org_id, label, value in recent_feedback.values_list(
            "prediction_id", "organization_id", "label", "value"
        )
    }
    predictions = PredictionRecord.objects.filter(
        created_at__gte=start, status__lt=400, rows=1, prediction_id__in=recent_feedback.values("prediction_id")
    ).values_list("prediction_id", "organization_id", "version_id", "created_at", "outputs")
    sums: dict[tuple, dict] = defaultdict(lambda: {"feedback": 0, "correct": 0, "abs": 0.0, "sq": 0.0})
    for prediction_id, org_id, version_id, created_at, outputs in predictions.iterator(chunk_size=5000):
        truth = truths.get((org_id, prediction_id))
        if truth is None or not isinstance(outputs, list) or not outputs:
            continue
        label, value = truth
        predicted = outputs[0]
        entry = sums[(version_id, day_floor(created_at).date())]
        if value is not None:
            if not is_number(predicted):
                continue
            error = float(predicted) - float(value)
            entry["abs"] += abs(error)
            entry["sq"] += error * error
        elif label is not None:
            entry["correct"] += labels_match(label, predicted)
        else:
            continue
        entry["feedback"] += 1
    versions = {v.id: v for v in ModelVersion.objects.filter(id__in={key[0] for key in sums}).select_related("registered_model")}
    rows = [
        QualityRollup(
            day=day,
            organization_id=versions[version_id].registered_model.organization_id,
            registered_model_id=versions[version_id].registered_model_id,
            version_id=version_id,
            task=versions[version_id].task,
            feedback=entry["feedback"],
            correct=entry["correct"],
            abs_error_sum=entry["abs"],
            squared_error_sum=entry["sq"],
            updated_at=now,
        )
        for (version_id, day), entry in sums.items()
        if version_id in versions and entry["feedback"]
    ]
    with transaction.atomic():
        QualityRollup.objects.filter(day__gte=start.date()).delete()
        QualityRollup.objects.bulk_create(rows, batch_size=1000)
    return len(rows)
