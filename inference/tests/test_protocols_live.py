"""The V2 and MLflow endpoints, driven by their real clients and files."""

import json

import numpy as np
import pytest

from registry.tests import factories as f

ROW = f.IRIS_ROW


def make_iris(tenant, estimator=None, name="iris"):
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant.user), organization=tenant.organization, name=name)
    f.create_version(model, estimator, promote=True)
    return model


# --- Open Inference Protocol with tritonclient -------------------------------------------


@pytest.fixture
def triton(live_server, tenant_a):
    import tritonclient.http as httpclient

    make_iris(tenant_a)
    client = httpclient.InferenceServerClient(url=live_server.url.replace("http://", ""))
    yield client, {"X-API-Key": tenant_a.api_key}
    client.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_tritonclient_infer(triton, binary):
    import tritonclient.http as httpclient

    client, headers = triton
    rows = np.array([ROW, [6.7, 3.0, 5.2, 2.3]], dtype=np.float64)
    tensor = httpclient.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("predict", binary_data=binary),
        httpclient.InferRequestedOutput("predict_proba", binary_data=binary),
    ]
    result = client.infer("iris", [tensor], outputs=outputs, headers=headers)
    expected = f.iris_model()
    assert result.as_numpy("predict").tolist() == expected.predict(rows).tolist()
    np.testing.assert_allclose(result.as_numpy("predict_proba"), expected.predict_proba(rows))
    assert result.get_response()["model_version"] == "1"


@pytest.mark.django_db(transaction=True)
def test_tritonclient_health_and_metadata(triton):
    client, headers = triton
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert client.is_model_ready("iris", headers=headers)
    metadata = client.get_model_metadata("iris", headers=headers)
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in metadata["outputs"]] == ["predict", "predict_proba", "explanation", "explanation_base"]
    assert client.get_model_metadata("iris", model_version="1", headers=headers)["versions"] == ["1"]


@pytest.mark.django_db(transaction=True)
def test_tritonclient_sees_protocol_errors(triton):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client, headers = triton
    rows = np.array([[1.0, 2.0, float("nan"), 4.0]])
    tensor = httpclient.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    with pytest.raises(InferenceServerException, match="Row 0, column 'f2': expected a finite number"):
        client.infer("iris", [tensor], headers=headers)
    with pytest.raises(InferenceServerException, match="not found|Not found"):
        client.infer("no-such-model", [tensor], headers=headers)


@pytest.mark.django_db
def test_v2_model_names_resolve_inside_the_keys_organization(tenant_a, tenant_b, client):
    make_iris(tenant_a)
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
    own = client.post("/v2/models/iris/infer", body, content_type="application/json", HTTP_X_API_KEY=tenant_a.api_key)
    assert own.status_code == 200
    assert own.json()["outputs"][0]["data"] == [0]
    other = client.post("/v2/models/iris/infer", body, content_type="application/json", HTTP_X_API_KEY=tenant_b.api_key)
    missing = client.post("/v2/models/nope/infer", body, content_type="application/json", HTTP_X_API_KEY=tenant_b.api_key)
    assert other.status_code == missing.status_code == 404
    assert other.content == missing.content
    assert set(other.json()) == {"error"}


# --- MLflow scoring protocol -------------------------------------------------------------


@pytest.fixture
def mlflow_example(tmp_path):
    import mlflow.sklearn
    import pandas as pd

    example = pd.DataFrame([ROW, [6.7, 3.0, 5.2, 2.3]], columns=f.IRIS_FEATURES)
    folder = tmp_path / "m"
    mlflow.sklearn.save_model(f.iris_frame_model(), str(folder), input_example=example, pip_requirements=["scikit-learn"])
    return (folder / "serving_input_example.json").read_bytes()


@pytest.mark.django_db
def test_mlflow_serving_input_example_is_accepted(tenant_a, client, mlflow_example):
    make_iris(tenant_a, f.iris_frame_model())
    response = client.post(
        "/api/v1/models/acme/iris/invocations", mlflow_example, content_type="application/json", HTTP_X_API_KEY=tenant_a.api_key
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"predictions": [0, 2]}
    assert response["X-Cache"] == "MISS"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, content_type",
    [
        pytest.param({"dataframe_records": [dict(zip(f.IRIS_FEATURES, ROW, strict=True))]}, "application/json", id="records"),
        pytest.param({"instances": [ROW]}, "application/json", id="instances"),
        pytest.param({"inputs": [ROW]}, "application/json", id="inputs"),
        pytest.param(",".join(f.IRIS_FEATURES) + "\n" + ",".join(map(str, ROW)) + "\n", "text/csv", id="csv"),
    ],
)
def test_mlflow_formats(tenant_a, client, body, content_type):
    make_iris(tenant_a, f.iris_frame_model())
    payload = json.dumps(body) if content_type == "application/json" else body
    response = client.post(
        "/api/v1/models/acme/iris/invocations", payload, content_type=content_type, HTTP_X_API_KEY=tenant_a.api_key
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"predictions": [0]}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, content_type, status, code",
    [
        pytest.param(
            json.dumps({"instances": [ROW], "inputs": [ROW]}), "application/json", 400, "BAD_REQUEST", id="two-format-keys"
        ),
        pytest.param(
            json.dumps({"instances": [[1, "x", 3, 4]]}), "application/json", 400, "INVALID_PARAMETER_VALUE", id="string-cell"
        ),
        pytest.param("a;b", "application/xml", 415, "BAD_REQUEST", id="unsupported-type"),
    ],
)
def test_mlflow_errors_use_mlflow_shape(tenant_a, client, body, content_type, status, code):
    make_iris(tenant_a, f.iris_frame_model())
    response = client.post(
        "/api/v1/models/acme/iris/invocations", body, content_type=content_type, HTTP_X_API_KEY=tenant_a.api_key
    )
    assert response.status_code == status
    assert response.json()["error_code"] == code
    assert set(response.json()) == {"error_code", "message"}
