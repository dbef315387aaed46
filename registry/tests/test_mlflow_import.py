"""Import versions from a real MLflow tracking server, started by the tests."""

import subprocess
import sys

import pytest

from platform_site.tests.processes import free_port, wait_for_http
from registry.models import ModelVersion
from registry.tests import factories as f

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "server.log", "wb"),
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health", process, timeout=90, log=lambda: (root / "server.log").read_text()[-3000:])
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def logged(mlflow_server):
    """An iris model logged to the server: registered as version 1 with alias 'champion'."""
    import mlflow
    import mlflow.sklearn
    import pandas as pd
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(mlflow_server)
    example = pd.DataFrame([f.IRIS_ROW], columns=f.IRIS_FEATURES)
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(
            f.iris_frame_model(),
            name="model",
            registered_model_name="iris-mlflow",
            input_example=example,
            pip_requirements=["scikit-learn"],
        )
    MlflowClient(mlflow_server).set_registered_model_alias("iris-mlflow", "champion", "1")
    with mlflow.start_run():
        import os

        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer

        hostile = Pipeline([("run", FunctionTransformer(func=os.system))])
        mlflow.sklearn.log_model(
            hostile,
            name="model",
            registered_model_name="hostile",
            pip_requirements=["scikit-learn"],
            serialization_format="cloudpickle",
        )
    return {"run_id": run.info.run_id}


@pytest.fixture
def owner(tenant_a, settings, mlflow_server):
    settings.MLFLOW_TRACKING_URI = mlflow_server
    client = tenant_a.jwt_client()
    assert client.post("/api/v1/models", {"org": "acme", "name": "iris"}, format="json").status_code == 201
    return client


def import_uri(client, uri):
    return client.post("/api/v1/models/acme/iris/versions/import-mlflow", {"model_uri": uri}, format="json")


@pytest.mark.parametrize("uri", ["models:/iris-mlflow/1", "models:/iris-mlflow@champion", "runs:/{run_id}/model"])
def test_import_from_tracking_server(owner, logged, uri):
    uri = uri.format(**logged)
    response = import_uri(owner, uri)
    assert response.status_code == 201, response.content
    version = response.json()
    assert version["format"] == "mlflow"
    assert version["source"] == uri
    assert version["signature"]["source"] == "mlflow"
    assert version["feature_names"] == f.IRIS_FEATURES
    assert version["estimator_class"].endswith("LogisticRegression")


def test_imported_version_serves_predictions(owner, logged, tenant_a):
    import_uri(owner, "models:/iris-mlflow/1")
    owner.post("/api/v1/models/acme/iris/versions/1/stage", {"stage": "production"}, format="json")
    response = tenant_a.key_client().post("/api/v1/models/acme/iris/predict", {"inputs": [f.IRIS_ROW]}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["predictions"] == [0]


def test_hostile_mlflow_model_is_refused(owner, logged):
    response = import_uri(owner, "models:/hostile/1")
    assert response.status_code == 422
    assert "posix.system" in response.json()["refused_globals"]
    assert ModelVersion.objects.count() == 0


@pytest.mark.parametrize(
    "uri, status",
    [
        pytest.param("models:/does-not-exist/1", 400, id="unknown-model"),
        pytest.param("s3://bucket/model", 400, id="not-an-mlflow-uri"),
    ],
)
def test_bad_uris_are_refused(owner, logged, uri, status):
    response = import_uri(owner, uri)
    assert response.status_code == status
    assert response.json()["errors"][0]["field"] == "model_uri"
    assert ModelVersion.objects.count() == 0


def test_import_without_tracking_server_is_a_409_that_says_how_to_enable_it(tenant_a, settings):
    """A feature the operator has not configured is not an outage (a 5xx would page someone)."""
    settings.MLFLOW_TRACKING_URI = ""
    client = tenant_a.jwt_client()
    client.post("/api/v1/models", {"org": "acme", "name": "iris"}, format="json")
    response = import_uri(client, "models:/x/1")
    assert response.status_code == 409
    body = response.json()
    assert response["Content-Type"] == "application/problem+json"
    assert (body["code"], body["feature"], body["setting"]) == ("feature_not_configured", "mlflow_import", "MLFLOW_TRACKING_URI")
    assert "setting MLFLOW_TRACKING_URI" in body["detail"]
    assert ModelVersion.objects.count() == 0
