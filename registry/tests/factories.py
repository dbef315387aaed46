"""Tiny real scikit-learn models as upload-ready bytes, built once per test session."""

from __future__ import annotations

import functools
import io
import pickle
import zipfile
from pathlib import Path

import joblib
import numpy as np
from django.core.files.uploadedfile import SimpleUploadedFile
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


@functools.lru_cache
def iris_data():
    data = load_iris()
    return data.data, data.target


@functools.lru_cache
def iris_model() -> LogisticRegression:
    x, y = iris_data()
    return LogisticRegression(max_iter=500).fit(x, y)


@functools.lru_cache
def iris_frame_model():
    import pandas as pd

    x, y = iris_data()
    frame = pd.DataFrame(x, columns=IRIS_FEATURES)
    return LogisticRegression(max_iter=500).fit(frame, y)


@functools.lru_cache
def regression_model() -> LinearRegression:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([1.5, -2.0, 0.5]) + 3.0
    return LinearRegression().fit(x, y)


def joblib_bytes(model) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def pickle_bytes(model, protocol: int = 5) -> bytes:
    return pickle.dumps(model, protocol=protocol)


def skops_bytes(model) -> bytes:
    import skops.io

    return skops.io.dumps(model)


def mlflow_zip_bytes(model, tmp_path: Path, *, input_example=None, serialization_format: str = "cloudpickle") -> bytes:
    import mlflow.sklearn
    import sklearn

    folder = tmp_path / f"mlflow-model-{serialization_format}"
    # Named requirements: without them MLflow infers them by loading the model in a new Python
    # process, about 20 s a save here, and the platform does not read them.
    mlflow.sklearn.save_model(
        model,
        str(folder),
        input_example=input_example,
        serialization_format=serialization_format,
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def upload_file(content: bytes, name: str = "model.joblib") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def create_version(model, estimator=None, *, promote: bool = False):
    """A stored, loadable version made without the upload sandbox (fast fixtures).

    The upload path itself, sandbox included, is tested in test_api_registry.py; this is
    for tests about what happens to a version after it exists.
    """
    import sklearn
    from django.db.models import Max

    from accounts.principals import Caller
    from registry import artifacts, services, signatures
    from registry.loaders import describe_estimator
    from registry.loaders.serving import linear_spec_for
    from registry.models import ModelVersion

    estimator = estimator if estimator is not None else iris_model()
    content = joblib_bytes(estimator)
    described = describe_estimator(estimator=estimator, saved_sklearn_version=sklearn.__version__)
    number = (model.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    import hashlib
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".joblib") as handle:
        handle.write(content)
        handle.flush()
        name = artifacts.store(
            Path(handle.name), f"orgs/{model.organization_id}/models/{model.pk}/versions/{number}/model.joblib"
        )
    version = ModelVersion.objects.create(
        registered_model=model,
        number=number,
        artifact=name,
        sha256=hashlib.sha256(content).hexdigest(),
        size_bytes=len(content),
        format="joblib",
        sklearn_version=sklearn.__version__,
        serving_sklearn_version=sklearn.__version__,
        estimator_class=described.estimator_class,
        final_estimator_class=described.final_estimator_class,
        task=described.task,
        classes=described.classes,
        has_predict_proba=described.has_predict_proba,
        n_features=described.n_features,
        fitted_with_feature_names=bool(described.feature_names),
        signature=signatures.from_estimator(feature_names=described.feature_names, n_features=described.n_features),
    )
    # What the upload sandbox writes for a model it checked (registry.loaders.sandbox_child).
    serving = pickle.dumps(estimator, protocol=5)
    version.serving_artifact.name = artifacts.store_bytes(serving, artifacts.serving_artifact_name(version))
    version.serving_sha256 = hashlib.sha256(serving).hexdigest()
    version.serving_size_bytes = len(serving)
    version.linear_spec = linear_spec_for(estimator)
    version.save(update_fields=["serving_artifact", "serving_sha256", "serving_size_bytes", "linear_spec"])
    if promote:
        owner = model.organization.memberships.select_related("user").first()
        services.set_stage(caller=Caller(user=owner.user if owner else None), version=version, stage="production")
        version.refresh_from_db()
    return version
