"""The demo model `make run` gives the demo organization: iris, uploaded like any other."""

from __future__ import annotations

import io

from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import Organization
from accounts.principals import Caller
from registry import selectors, services
from registry.models import RegisteredModel

DEMO_MODEL = "iris"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def seed_demo_model(*, caller: Caller, organization: Organization) -> RegisteredModel:
    """Create `<org>/iris` with a production version (LogisticRegression), once."""
    existing = RegisteredModel.objects.filter(organization=organization, name=DEMO_MODEL, deleted_at__isnull=True).first()
    if existing is not None and existing.production_version_id:
        return existing
    import joblib
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    frame = pd.DataFrame(data.data, columns=FEATURES)
    estimator = LogisticRegression(max_iter=500).fit(frame, data.target)
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    model = existing or services.create_model(
        caller=caller,
        organization=organization,
        name=DEMO_MODEL,
        description="Iris species from flower measurements (LogisticRegression).",
    )
    version = services.upload_version(
        caller=caller,
        model=model,
        file=SimpleUploadedFile("iris.joblib", buffer.getvalue()),
        input_example=[dict(zip(FEATURES, row, strict=True)) for row in data.data[:2].tolist()],
        metrics={"train_accuracy": round(float(estimator.score(frame, data.target)), 4)},
        params={"max_iter": 500},
        description="Demo version, trained on the iris data set shipped with scikit-learn.",
    )
    services.set_stage(caller=caller, version=version, stage="production", reason="demo")
    return selectors.model_in(organization=organization, name=DEMO_MODEL)
