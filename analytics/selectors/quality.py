"""Live quality of a model's versions per day, from the quality rollups."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, date, datetime, time

from django.db.models import Sum

from accounts.selectors import for_organization
from analytics.models import Granularity, QualityRollup, UsageRollup
from analytics.statistics.experiments import wilson_interval
from registry.models import ModelVersion, RegisteredModel


def quality_of(*, model: RegisteredModel, start: date, end: date) -> dict:
    """Accuracy (with a Wilson interval) or MAE/RMSE per version per day in [start, end)."""
    rows = (
        for_organization(QualityRollup.objects, model.organization)
        .filter(registered_model=model, day__gte=start, day__lt=end)
        .order_by("day", "version_id")
        .values("day", "version_id", "task", "feedback", "correct", "abs_error_sum", "squared_error_sum")
    )
    numbers = dict(
        for_organization(ModelVersion.objects, model.organization).filter(registered_model=model).values_list("id", "number")
    )
    requests = defaultdict(int)
    usage = (
        for_organization(UsageRollup.objects, model.organization)
        .filter(
            registered_model=model,
            granularity=Granularity.DAY,
            bucket_start__gte=datetime.combine(start, time(), tzinfo=UTC),
            bucket_start__lt=datetime.combine(end, time(), tzinfo=UTC),
        )
        .values("bucket_start", "version_id")
        .annotate(requests=Sum("requests"))
    )
    for row in usage:
        requests[(row["bucket_start"].date(), row["version_id"])] += row["requests"]
    days = []
    for row in rows:
        n = row["feedback"]
        entry = {
            "day": row["day"],
            "version": numbers.get(row["version_id"]),
            "requests": requests.get((row["day"], row["version_id"]), 0),
            "feedback": n,
        }
        if row["task"] == "regression":
            entry.update(metric="mae_rmse", mae=row["abs_error_sum"] / n, rmse=math.sqrt(row["squared_error_sum"] / n))
        else:
            estimate = wilson_interval(row["correct"], n)
            entry.update(
                metric="accuracy",
                correct=row["correct"],
                accuracy=estimate.value,
                accuracy_low=estimate.low,
                accuracy_high=estimate.high,
            )
        days.append(entry)
    return {"model": model.full_name, "task": model.task, "start": start, "end": end, "days": days}
