"""Live mirrors' accumulated reports (the mirrors themselves: inference.mirrors.selectors)."""

from __future__ import annotations

from analytics.models import MirrorReport
from inference.models import Mirror


def report_of(*, mirror: Mirror) -> MirrorReport | None:
    """The mirror's report row, read only within the mirror's organization; None before the worker's first run."""
    cached = getattr(mirror, "_report_row", False)
    if cached is False:
        cached = MirrorReport.objects.filter(mirror=mirror, organization_id=mirror.registered_model.organization_id).first()
        mirror._report_row = cached
    return cached
