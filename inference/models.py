"""Prediction records, feedback, experiments (traffic splits)."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Organization
from registry.models import ModelVersion, RegisteredModel


class PredictionRecord(models.Model):
    """One answered prediction request, written in bulk by the worker from the record stream.

    The one table that grows with traffic: rows are pruned by `created_at` (retention) and
    the rollups keep the history, so every read path filters on `created_at` first.
    """

    TENANT_PATH = "organization"

    prediction_id = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(db_index=True)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    experiment_id = models.BigIntegerField(null=True, blank=True)
    variant = models.CharField(max_length=64, blank=True)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    unit_id = models.CharField(max_length=200, blank=True)
    protocol = models.CharField(max_length=10)
    rows = models.PositiveIntegerField()
    latency_ms = models.FloatField()
    cache_hit = models.BooleanField(default=False)
    status = models.PositiveSmallIntegerField(default=200)
    error_code = models.CharField(max_length=40, blank=True)
    inputs = models.JSONField(null=True, blank=True)
    outputs = models.JSONField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["version", "created_at"]),
            models.Index(fields=["organization", "created_at"]),
        ]

    def __str__(self) -> str:
        return self.prediction_id


class Feedback(models.Model):
    """The truth for a prediction: a label (classification) or a value (regression)."""

    TENANT_PATH = "organization"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    prediction_id = models.CharField(max_length=40)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    label = models.JSONField(null=True, blank=True)
    value = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "prediction_id"], name="one_feedback_per_prediction")]

    def __str__(self) -> str:
        return f"feedback for {self.prediction_id}"


class Experiment(models.Model):
    """A traffic split between versions of one model; the first variant is the control."""

    TENANT_PATH = "registered_model__organization"

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"

    class Metric(models.TextChoices):
        ACCURACY = "accuracy", "Accuracy"
        MEAN_VALUE = "mean_value", "Mean value"

    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="experiments")
    name = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    metric = models.CharField(max_length=12, choices=Metric.choices, default=Metric.ACCURACY)
    min_samples = models.PositiveIntegerField(default=100)
    # [{"version": 3, "version_id": 17, "weight": 50, "name": "v3"}, ...] in bucket order.
    variants = models.JSONField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)
    winner_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["registered_model"], condition=models.Q(status="running"), name="one_running_experiment_per_model"
            )
        ]

    def __str__(self) -> str:
        return f"{self.registered_model} experiment {self.name}"
