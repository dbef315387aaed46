"""Usage and quality rollups, drift reports, and each organization's alert settings.

Rollups are the history: prediction records are pruned after a retention window, rollups
stay. Every rollup row is keyed so that recomputing it (a late record, a retried task)
overwrites the same row instead of adding one.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Organization
from registry.models import ModelVersion, RegisteredModel


class Granularity(models.TextChoices):
    HOUR = "hour", "Hour"
    DAY = "day", "Day"


class UsageRollup(models.Model):
    """Traffic of one version, variant and API key in one hour or one day."""

    TENANT_PATH = "organization"

    granularity = models.CharField(max_length=4, choices=Granularity.choices)
    bucket_start = models.DateTimeField()
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    variant = models.CharField(max_length=64, blank=True)
    # 0 stands for "no API key" (a person calling with a JWT or a session), so that the
    # unique key has no NULL in it on every database.
    api_key_id = models.BigIntegerField(default=0)
    requests = models.BigIntegerField(default=0)
    rows = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    cache_hits = models.BigIntegerField(default=0)
    latency_sum_ms = models.FloatField(default=0.0)
    latency_max_ms = models.FloatField(default=0.0)
    # An hour's percentiles are exact; a day's are read from its latency sketch, within 1 %.
    latency_p50_ms = models.FloatField(null=True, blank=True)
    latency_p95_ms = models.FloatField(null=True, blank=True)
    latency_p99_ms = models.FloatField(null=True, blank=True)
    # A DDSketch of the latencies, {"bins": {"<key>": count}, "zero_count": n}, whose sums
    # merge hours into days exactly (analytics.statistics.sketches).
    latency_sketch = models.JSONField(default=dict, blank=True)
    # Classifiers: {"kind": "classes", "counts": {"0": 12, ...}}; regressors: {"kind": "numeric",
    # "count", "sum", "min", "max", "deciles"}. Successful predictions only.
    outputs = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["granularity", "bucket_start", "version", "variant", "api_key_id"], name="one_usage_rollup_per_bucket"
            )
        ]
        indexes = [
            models.Index(fields=["registered_model", "granularity", "bucket_start"]),
            models.Index(fields=["organization", "granularity", "bucket_start"]),
            models.Index(fields=["granularity", "bucket_start"]),
        ]

    def __str__(self) -> str:
        return f"{self.granularity} {self.bucket_start:%Y-%m-%d %H:%M} v{self.version_id}"


class PlatformDashboard(UsageRollup):
    """The operators' dashboard in the Django admin (a proxy: it has no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = "platform dashboard"
        verbose_name_plural = "platform dashboard"


class RollupCursor(models.Model):
    """How far the rollup has read the prediction records (by id, which grows with inserts).

    `settled_record_id` trails `last_record_id` by one run: each run re-reads the records
    above it, so a record whose insert committed late (after a run already read a larger
    id) is still rolled up by the next run.
    """

    name = models.CharField(max_length=40, unique=True)
    last_record_id = models.BigIntegerField(default=0)
    settled_record_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.name} at {self.last_record_id}"


class QualityRollup(models.Model):
    """Live quality of one version on one day (the day the predictions were served)."""

    TENANT_PATH = "organization"

    day = models.DateField()
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    task = models.CharField(max_length=20)
    feedback = models.IntegerField(default=0)
    correct = models.IntegerField(default=0)
    abs_error_sum = models.FloatField(default=0.0)
    squared_error_sum = models.FloatField(default=0.0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "day"], name="one_quality_rollup_per_version_day")]
        indexes = [models.Index(fields=["registered_model", "day"])]

    def __str__(self) -> str:
        return f"quality v{self.version_id} {self.day}"


class DriftReport(models.Model):
    """One comparison of a version's reference data with the inputs it served in a window.

    A report asked for through the API or the web starts `pending` with its results empty
    (NULL) and is computed by the worker (`running`, then `done` or `failed` with `error`);
    scheduled reports are computed by the worker from the start and stored `done`.
    """

    TENANT_PATH = "organization"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    # The statuses a model may hold only one report in at a time.
    UNFINISHED = (Status.PENDING, Status.RUNNING)

    class Trigger(models.TextChoices):
        API = "api", "API"
        ADMIN = "admin", "Admin"
        SCHEDULE = "schedule", "Schedule"

    class ReferenceSource(models.TextChoices):
        REFERENCE_DATA = "reference_data", "Uploaded reference data"
        FIRST_DAYS = "first_days", "Inputs of the version's first days"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DONE)
    error = models.CharField(max_length=500, blank=True)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    reference_source = models.CharField(max_length=20, choices=ReferenceSource.choices, blank=True)
    reference_start = models.DateTimeField(null=True, blank=True)
    reference_end = models.DateTimeField(null=True, blank=True)
    reference_rows = models.PositiveIntegerField(null=True, blank=True)
    current_rows = models.PositiveIntegerField(null=True, blank=True)
    drift_share_threshold = models.FloatField()
    n_features = models.PositiveIntegerField(null=True, blank=True)
    drifted_features = models.PositiveIntegerField(null=True, blank=True)
    share_drifted = models.FloatField(null=True, blank=True)
    is_drift = models.BooleanField(null=True, blank=True)
    # [{"name", "type", "test", "statistic", "p_value", "threshold", "drifted", "psi", "psi_band",
    #   "histogram": {...}}] in signature order.
    features = models.JSONField(default=list)
    # The same fields for the model's output, or {} when no output was recorded.
    prediction = models.JSONField(default=dict, blank=True)
    seconds = models.FloatField(default=0.0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    alerted_at = models.DateTimeField(null=True, blank=True)
    webhook_delivered_at = models.DateTimeField(null=True, blank=True)
    webhook_attempts = models.PositiveIntegerField(default=0)
    webhook_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["version", "-created_at"]),
            models.Index(fields=["registered_model", "-created_at"]),
            models.Index(fields=["organization", "-created_at"]),
        ]
        constraints = [
            # One report computed at a time per model: a member looping on "run now" queues one.
            models.UniqueConstraint(
                fields=["registered_model"],
                condition=models.Q(status__in=["pending", "running"]),
                name="one_unfinished_drift_report_per_model",
            ),
            # The beat schedule may fire twice for one window; the report is stored once.
            models.UniqueConstraint(
                fields=["version", "window_start", "window_end"],
                condition=models.Q(trigger="schedule"),
                name="one_scheduled_drift_report_per_window",
            ),
        ]

    def __str__(self) -> str:
        return f"drift v{self.version_id} {self.window_start:%Y-%m-%d %H:%M}..{self.window_end:%H:%M}"


class AlertSettings(models.Model):
    """Where an organization wants drift alerts sent, besides its audit log."""

    TENANT_PATH = "organization"

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="+")
    drift_webhook_url = models.URLField(max_length=500, blank=True)
    # Signs each delivery (HMAC-SHA256); shown to the organization once, when made.
    drift_webhook_secret = models.CharField(max_length=80, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "alert settings"

    def __str__(self) -> str:
        return f"alert settings of {self.organization}"


class Replay(models.Model):
    """The inputs production served, replayed against another version of the model, and the comparison.

    Asked for through the API or the web, a replay starts `pending` and is computed by the
    worker (`running`, with `rows_done` of `rows_total` as progress), then `done` with its
    report, or `failed` with `error`. `baseline_version` is the production version when it was
    asked for: its recorded inputs are the rows replayed, and it is predicted again beside
    `version` on the same batches.
    """

    TENANT_PATH = "organization"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    # The statuses a model may hold only one replay in at a time.
    UNFINISHED = (Status.PENDING, Status.RUNNING)

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    baseline_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    error = models.CharField(max_length=500, blank=True)
    # The newest `rows_requested` rows production served, within the window when one is set.
    rows_requested = models.PositiveIntegerField()
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    rows_total = models.PositiveIntegerField(null=True, blank=True)
    rows_done = models.PositiveIntegerField(default=0)
    # Rows both versions answered; `agreement` is the share of them answered alike.
    rows_compared = models.PositiveIntegerField(null=True, blank=True)
    agreement = models.FloatField(null=True, blank=True)
    # {"task", "agreement", "confusion" | "differences", "probability_shift", "failures",
    #  "latency", "feedback"}: analytics.services.replays.measure_replay says what each holds.
    report = models.JSONField(default=dict, blank=True)
    seconds = models.FloatField(default=0.0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["version", "-created_at"]),
            models.Index(fields=["registered_model", "-created_at"]),
        ]
        constraints = [
            # Replays cost runner time: one computed at a time per model.
            models.UniqueConstraint(
                fields=["registered_model"],
                condition=models.Q(status__in=["pending", "running"]),
                name="one_unfinished_replay_per_model",
            ),
        ]

    def __str__(self) -> str:
        return f"replay of v{self.version_id} against v{self.baseline_version_id}"


class MirrorReport(models.Model):
    """What a live mirror (inference.Mirror) has compared so far, and how far it has read.

    The report has the replay's shape (analytics.services.replays.build_report) and is computed
    again from the mirror's MirroredPrediction rows after each run that added some, so feedback
    that arrives later still counts. `settled_record_id` trails `last_record_id` by one run, as
    the usage rollup's cursor does: each run reads the flagged records above it again, so a
    record whose insert committed late is still mirrored (once: the rows are unique per record).
    """

    TENANT_PATH = "organization"

    mirror = models.OneToOneField("inference.Mirror", on_delete=models.CASCADE, related_name="+")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="+")
    last_record_id = models.BigIntegerField(default=0)
    settled_record_id = models.BigIntegerField(default=0)
    # Rows the candidate predicted (or failed on), and rows left out because the hour's cap was reached.
    rows_mirrored = models.PositiveBigIntegerField(default=0)
    rows_over_cap = models.PositiveBigIntegerField(default=0)
    rows_compared = models.PositiveIntegerField(null=True, blank=True)
    agreement = models.FloatField(null=True, blank=True)
    report = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"report of mirror {self.mirror_id}"


class MirroredPrediction(models.Model):
    """One production record predicted again by a mirror's candidate: both answers, or the candidate's error."""

    TENANT_PATH = "organization"

    mirror = models.ForeignKey("inference.Mirror", on_delete=models.CASCADE, related_name="+")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    prediction_id = models.CharField(max_length=40)
    served_at = models.DateTimeField()
    mirrored_at = models.DateTimeField(default=timezone.now)
    rows = models.PositiveIntegerField()
    # Production's answers as recorded, and the candidate's (NULL when it failed: error_code says why).
    production = models.JSONField()
    candidate = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=40, blank=True)
    error_message = models.CharField(max_length=300, blank=True)
    # The candidate's predict time for this record's rows (its share of the batch's call).
    candidate_ms = models.FloatField(null=True, blank=True)
    # The whole request as production served it (from its record), for comparison.
    production_ms = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["mirror", "prediction_id"], name="one_mirrored_prediction_per_record")]
        indexes = [models.Index(fields=["mirror", "mirrored_at"])]

    def __str__(self) -> str:
        return f"{self.prediction_id} mirrored by {self.mirror_id}"
