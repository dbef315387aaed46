"""Reads for inference outside the hot path."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Organization
from accounts.selectors import for_organization
from inference.models import WebhookDelivery


def webhook_deliveries_of(*, organization: Organization, subject: str | None = None) -> QuerySet[WebhookDelivery]:
    """The organization's webhook attempts, newest first; only those about `subject` when given."""
    deliveries = for_organization(WebhookDelivery.objects.all(), organization)
    if subject:
        deliveries = deliveries.filter(subject=subject)
    return deliveries
