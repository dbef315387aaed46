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
    # The Mirror whose sample this request fell in (the hot path's draw), read by the analytics
    # worker, which predicts its inputs with the mirror's candidate; NULL for nearly every record.
    mirror_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["version", "created_at"]),
            models.Index(fields=["organization", "created_at"]),
            # Only the sampled records are indexed: the mirror worker's scan stays as small as its sample.
            models.Index(
                fields=["mirror_id", "id"], condition=models.Q(mirror_id__isnull=False), name="prediction_record_mirrored"
            ),
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
        MAE = "mae", "Mean absolute error"
        RMSE = "rmse", "Root mean squared error"

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


class Mirror(models.Model):
    """Live mirroring: a sampled share of production's requests, predicted again by a candidate version.

    The hot path only draws (with `fraction`, read from the cached route) and flags the request's
    prediction record; the analytics worker predicts the flagged records' inputs with `version`
    after the answer has left, at most `max_rows_per_hour` rows an hour, and compares them with the
    answers production recorded (analytics.services.mirrors). One mirror runs per model.
    """

    TENANT_PATH = "registered_model__organization"

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"

    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="mirrors")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    # Production when mirroring started: only its records are mirrored (a promotion stops the mirror).
    baseline_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    fraction = models.FloatField()
    max_rows_per_hour = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    stop_reason = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["registered_model"], condition=models.Q(status="running"), name="one_running_mirror_per_model"
            ),
        ]

    def __str__(self) -> str:
        return f"mirror of {self.registered_model} to v{self.version_id}"


class BatchLimits(models.Model):
    """An organization's batch limits, set by an operator; an empty field means the platform default."""

    TENANT_PATH = "organization"

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="batch_limits")
    max_concurrent_jobs = models.PositiveIntegerField(null=True, blank=True, help_text="Queued plus running jobs at once.")
    max_file_bytes = models.PositiveBigIntegerField(null=True, blank=True, help_text="Largest input file, uncompressed.")
    max_rows = models.PositiveBigIntegerField(null=True, blank=True, help_text="Most rows in one job.")

    class Meta:
        verbose_name_plural = "batch limits"

    def __str__(self) -> str:
        return f"batch limits of {self.organization}"


class BatchJob(models.Model):
    """A file of rows scored by the workers in chunks; the result keeps the input's rows in order."""

    TENANT_PATH = "organization"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Format(models.TextChoices):
        CSV = "csv", "CSV with a header"
        JSONL = "jsonl", "JSON lines"

    class OnError(models.TextChoices):
        FAIL = "fail", "Fail the job"
        SKIP = "skip", "Write an error column and go on"

    class WebhookStatus(models.TextChoices):
        NONE = "", "No webhook"
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="batch_jobs")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    api_key_id = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    input_format = models.CharField(max_length=5, choices=Format.choices)
    input_name = models.CharField(max_length=300, help_text="The input file in storage, as uploaded.")
    input_filename = models.CharField(max_length=255, blank=True)
    input_compressed = models.BooleanField(default=False)
    input_bytes = models.PositiveBigIntegerField(default=0)
    storage_prefix = models.CharField(max_length=200)
    # The input's columns in file order (CSV header, or the first JSON line's keys).
    columns = models.JSONField(default=list)
    want_proba = models.BooleanField(default=False)
    on_error = models.CharField(max_length=4, choices=OnError.choices, default=OnError.FAIL)
    chunk_rows = models.PositiveIntegerField()
    chunk_max_bytes = models.PositiveBigIntegerField()
    rows_total = models.PositiveBigIntegerField(null=True, blank=True)
    rows_done = models.PositiveBigIntegerField(default=0)
    rows_failed = models.PositiveBigIntegerField(default=0)
    chunks_total = models.PositiveIntegerField(null=True, blank=True)
    chunks_done = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    errors = models.JSONField(default=list, blank=True)
    result_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    webhook_url = models.URLField(max_length=2000, blank=True)
    webhook_secret = models.CharField(max_length=80, blank=True)
    webhook_status = models.CharField(max_length=10, choices=WebhookStatus.choices, blank=True, default=WebhookStatus.NONE)
    webhook_attempts = models.PositiveSmallIntegerField(default=0)
    webhook_response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    webhook_last_error = models.CharField(max_length=500, blank=True)
    webhook_delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Last time the split wrote a chunk or a chunk was counted: the stall sweeper's clock.
    progressed_at = models.DateTimeField(null=True, blank=True)
    # Rows reserved against the monthly quota at submission (the file's line count; 0 when no
    # quota applied or Redis was down), in which month, and when the job gave back what it
    # did not deliver (inference.limits.release_rows).
    quota_month = models.CharField(max_length=6, blank=True)
    quota_rows_reserved = models.PositiveBigIntegerField(default=0)
    quota_settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "status"]),
            models.Index(fields=["status", "progressed_at"]),
            models.Index(fields=["registered_model", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"batch job {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED, self.Status.CANCELLED)

    @property
    def progress(self) -> float:
        """Rows done over rows total, 0 until the split has counted the rows, 1 once succeeded."""
        if self.status == self.Status.SUCCEEDED:
            return 1.0
        if not self.rows_total:
            return 0.0
        return round(min(1.0, self.rows_done / self.rows_total), 4)


class BatchChunk(models.Model):
    """One slice of a job's rows: scored by one task, written as one part, counted once."""

    TENANT_PATH = "job__organization"

    job = models.ForeignKey(BatchJob, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    first_row = models.PositiveBigIntegerField()
    rows = models.PositiveIntegerField()
    is_done = models.BooleanField(default=False)
    rows_failed = models.PositiveIntegerField(default=0)
    # How many times a worker started it (more than one after a worker died or a redelivery).
    attempts = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Stamped every BATCH_HEARTBEAT_SECONDS while a worker scores it (inference.batch.heartbeat).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="unique_batch_chunk_index")]

    def __str__(self) -> str:
        return f"chunk {self.index} of job {self.job_id}"


class WebhookDelivery(models.Model):
    """One attempt to deliver a webhook (inference.webhooks), shown to the organization it is for."""

    TENANT_PATH = "organization"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="webhook_deliveries")
    # What the event is about: "batch_job:<id>" or "drift_report:<id>".
    subject = models.CharField(max_length=100)
    event = models.CharField(max_length=60)
    delivery_id = models.CharField(max_length=100)
    url = models.URLField(max_length=2000)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    is_delivered = models.BooleanField(default=False)
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.FloatField(default=0.0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"]), models.Index(fields=["subject"])]

    def __str__(self) -> str:
        return f"{self.event} to {self.url} ({self.status_code or self.error})"
