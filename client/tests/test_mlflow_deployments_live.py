"""The `modelhost` MLflow deployments target: a real MLflow registry (a SQLite store) to a live platform."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from registry.tests import factories as f

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(400)]

MLFLOW = Path(sys.executable).with_name("mlflow")


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An MLflow tracking store and model registry with iris registered twice (versions 1 and 2)."""
    import mlflow
    import mlflow.sklearn

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("iris", artifact_location=(tmp_path / "artifacts").as_uri())
    example = pd.DataFrame([f.IRIS_ROW], columns=f.IRIS_FEATURES)
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                f.iris_frame_model(),
                name="model",
                registered_model_name="iris",
                input_example=example,
                serialization_format="skops",
                pip_requirements=["scikit-learn"],
            )
    yield uri
    mlflow.set_tracking_uri(None)


def test_mlflow_deployments_create_get_update_predict_and_delete(registry, live_platform, tenant, monkeypatch):
    monkeypatch.setenv("MODELHOST_URL", live_platform.url)
    monkeypatch.setenv("MODELHOST_API_KEY", tenant.api_key)
    monkeypatch.setenv("MODELHOST_CONFIG_DIR", str(Path(registry.removeprefix("sqlite:///")).parent / "config"))
    env = {**os.environ}
    created = subprocess.run(
        [str(MLFLOW), "deployments", "create", "-t", "modelhost", "-m", "models:/iris/1", "--name", "iris"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert created.returncode == 0, created.stderr[-3000:]
    assert "iris" in created.stdout

    from mlflow.deployments import get_deploy_client
    from mlflow.exceptions import MlflowException

    client = get_deploy_client(f"modelhost:/{tenant.organization.slug}")
    got = client.get_deployment("iris")
    assert (got["name"], got["production_version"]) == ("iris", 1)
    assert got["invocations"] == f"{live_platform.url}/api/v1/models/{tenant.organization.slug}/iris/invocations"
    with pytest.raises(MlflowException, match="exists .version 1 serves it.: use update"):
        client.create_deployment("iris", "models:/iris/1")

    updated = client.update_deployment("iris", model_uri="models:/iris/2")
    assert (updated["version"], updated["stage"], updated["production_version"]) == (2, "production", 2)
    assert [d["name"] for d in client.list_deployments()] == ["iris"]

    frame = pd.DataFrame([f.IRIS_ROW, [6.7, 3.0, 5.2, 2.3]], columns=f.IRIS_FEATURES)
    answer = client.predict("iris", frame)
    assert answer.get_predictions(predictions_format="ndarray").tolist() == f.iris_frame_model().predict(frame).tolist()

    client.delete_deployment("iris")
    client.delete_deployment("iris")  # again: deleting what is gone is not an error
    with pytest.raises(MlflowException, match="404 not_found"):
        client.get_deployment("iris")
