"""Registered models, their immutable versions, and the numbered releases of production."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organization
from registry.storage import model_storage


class Task(models.TextChoices):
    CLASSIFICATION = "classification", "Classification"
    REGRESSION = "regression", "Regression"
    # predict answers -1 (an outlier) or 1 (an inlier): IsolationForest, LocalOutlierFactor(novelty=True).
    OUTLIER_DETECTION = "outlier_detection", "Outlier detection"
    # predict answers a cluster id (KMeans): ids have no meaning outside the fitted model.
    CLUSTERING = "clustering", "Clustering"


class Stage(models.TextChoices):
    NONE = "none", "None"
    STAGING = "staging", "Staging"
    PRODUCTION = "production", "Production"
    ARCHIVED = "archived", "Archived"


class ArtifactFormat(models.TextChoices):
    JOBLIB = "joblib", "joblib"
    PICKLE = "pickle", "pickle"
    SKOPS = "skops", "skops"
    MLFLOW = "mlflow", "MLflow model (zip)"


class RegisteredModel(models.Model):
    """`{org}/{name}`: a named model with versions; `production_version` is the live one."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="registered_models")
    name = models.SlugField(max_length=100)
    description = models.TextField(blank=True)
    task = models.CharField(max_length=20, choices=Task.choices, blank=True)
    production_version = models.ForeignKey("ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Seconds a cached prediction of this model stays valid; 0 turns the cache off.
    prediction_cache_ttl = models.PositiveIntegerField(default=300)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["organization__slug", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"], condition=Q(deleted_at__isnull=True), name="unique_live_model_name_per_org"
            )
        ]

    def __str__(self) -> str:
        return f"{self.organization.slug}/{self.name}"

    @property
    def full_name(self) -> str:
        return f"{self.organization.slug}/{self.name}"


class ModelVersion(models.Model):
    """An immutable artifact: its file, hash and signature never change after upload."""

    TENANT_PATH = "registered_model__organization"

    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    artifact = models.FileField(storage=model_storage, max_length=300)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    format = models.CharField(max_length=10, choices=ArtifactFormat.choices)
    # For MLflow zips: the path of the estimator file inside the archive and its serialization.
    inner_path = models.CharField(max_length=300, blank=True)
    inner_format = models.CharField(max_length=16, blank=True)
    sklearn_version = models.CharField(max_length=32, blank=True, help_text="The version the artifact was saved with.")
    serving_sklearn_version = models.CharField(max_length=32, help_text="The version that checked and serves it.")
    estimator_class = models.CharField(max_length=200)
    final_estimator_class = models.CharField(max_length=200, blank=True)
    task = models.CharField(max_length=20, choices=Task.choices)
    classes = models.JSONField(null=True, blank=True)
    has_predict_proba = models.BooleanField(default=False)
    n_features = models.PositiveIntegerField(null=True, blank=True)
    # Fitted on a DataFrame (has feature_names_in_): it is served a DataFrame in that column order.
    fitted_with_feature_names = models.BooleanField(default=False)
    signature = models.JSONField(default=dict)
    input_example = models.JSONField(null=True, blank=True)
    reference_data = models.FileField(storage=model_storage, max_length=300, blank=True)
    reference_rows = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True)
    params = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True)
    warnings = models.JSONField(default=list, blank=True)
    stage = models.CharField(max_length=12, choices=Stage.choices, default=Stage.NONE)
    source = models.CharField(max_length=500, blank=True, help_text="upload, or the MLflow model URI it came from.")
    load_seconds = models.FloatField(null=True, blank=True)
    # What serves it: the platform-written artifact the upload sandbox produced from the
    # tenant's file (runners load only this), and for a plain linear model its coefficients as
    # plain numbers, which the web evaluates itself (inference.predictors).
    serving_artifact = models.FileField(storage=model_storage, max_length=300, blank=True)
    serving_sha256 = models.CharField(max_length=64, blank=True)
    serving_size_bytes = models.PositiveBigIntegerField(default=0)
    linear_spec = models.JSONField(null=True, blank=True)
    # A tree ensemble's compiled form (registry.loaders.compiled): an ONNX graph the sandbox
    # wrote and verified bitwise against scikit-learn. Empty when the model has none, with the
    # reason in compiled_reason; use_compiled is the owner's choice (they may turn it off).
    compiled_artifact = models.FileField(storage=model_storage, max_length=300, blank=True)
    compiled_sha256 = models.CharField(max_length=64, blank=True)
    compiled_reason = models.CharField(max_length=500, blank=True)
    compiled_figures = models.JSONField(default=dict, blank=True)
    use_compiled = models.BooleanField(default=True)
    # Times a prediction of this version stopped its organization's runner.
    runner_crashes = models.PositiveIntegerField(default=0)
    runner_last_crash_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["registered_model", "-number"]
        constraints = [models.UniqueConstraint(fields=["registered_model", "number"], name="unique_version_number")]

    def __str__(self) -> str:
        return f"{self.registered_model}@v{self.number}"

    @property
    def serving_path(self) -> str:
        """Where predictions run: "web" (plain numbers the platform evaluates) or "runner"."""
        return "web" if self.linear_spec else "runner"

    @property
    def runtime(self) -> str:
        """What computes its predictions in the runner: "onnx" (the verified compiled form) or "sklearn"."""
        return "onnx" if self.use_compiled and self.compiled_sha256 else "sklearn"

    @property
    def runtime_reason(self) -> str:
        if self.compiled_sha256 and not self.use_compiled:
            return "The compiled form is turned off for this version by its owner."
        if not self.compiled_reason:
            return "Uploaded before compiled forms existed: served by scikit-learn."
        return self.compiled_reason

    @property
    def is_failing(self) -> bool:
        return self.runner_crashes >= settings.RUNNER_FAILING_AFTER_CRASHES


class Release(models.Model):
    """One change of a model's production pointer, numbered per model, like a Heroku release."""

    TENANT_PATH = "registered_model__organization"

    class Kind(models.TextChoices):
        PROMOTE = "promote", "Promote"
        ROLLBACK = "rollback", "Rollback"
        RETIRE = "retire", "Retire"
        EXPERIMENT = "experiment", "Experiment winner"

    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="releases")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=12, choices=Kind.choices)
    from_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    to_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    reason = models.CharField(max_length=500, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_api_key_prefix = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["registered_model", "-number"]
        constraints = [models.UniqueConstraint(fields=["registered_model", "number"], name="unique_release_number")]

    def __str__(self) -> str:
        return f"{self.registered_model} release {self.number}"
