import hashlib
import os
import pickle

import orjson
import pytest
import sklearn

from accounts.models import AuditEvent
from registry.models import ModelVersion, RegisteredModel, Release
from registry.tests import factories as f

pytestmark = pytest.mark.django_db


def create_model(client, name="iris", org="acme", **extra):
    return client.post("/api/v1/models", {"org": org, "name": name, **extra}, format="json")


def upload(client, content: bytes, name="model.joblib", model="iris", **fields):
    data = {"file": f.upload_file(content, name)}
    for key, value in fields.items():
        data[key] = value if isinstance(value, (str, bytes)) or hasattr(value, "read") else orjson.dumps(value).decode()
    return client.post(f"/api/v1/models/acme/{model}/versions", data, format="multipart")


@pytest.fixture
def owner(tenant_a):
    client = tenant_a.jwt_client()
    assert create_model(client).status_code == 201
    return client


def stored_files(settings, model_name: str = "iris") -> list[str]:
    model = RegisteredModel.objects.get(name=model_name, deleted_at=None)
    root = os.path.join(settings.STORAGES["models"]["OPTIONS"]["location"], f"orgs/{model.organization_id}/models/{model.pk}")
    found = []
    for folder, _, files in os.walk(root):
        found.extend(os.path.join(folder, name) for name in files)
    return found


# --- models ------------------------------------------------------------------------------


def test_create_list_update_and_soft_delete_model(tenant_a):
    client = tenant_a.jwt_client()
    created = create_model(client, description="flowers")
    assert created.status_code == 201
    assert created.json()["full_name"] == "acme/iris"
    assert created.json()["production_version"] is None
    assert [m["full_name"] for m in client.get("/api/v1/models").json()["results"]] == ["acme/iris"]
    patched = client.patch("/api/v1/models/acme/iris", {"description": "petals", "prediction_cache_ttl": 60}, format="json")
    assert patched.json()["description"] == "petals"
    assert patched.json()["prediction_cache_ttl"] == 60
    assert client.delete("/api/v1/models/acme/iris").status_code == 204
    assert client.get("/api/v1/models/acme/iris").status_code == 404
    assert RegisteredModel.objects.filter(name="iris").exclude(deleted_at=None).count() == 1
    assert create_model(client).status_code == 201  # the name is free again


@pytest.mark.parametrize(
    "body, status, field",
    [
        pytest.param({"name": "Iris Model"}, 400, "name", id="not-a-slug"),
        pytest.param({"name": ""}, 400, "name", id="blank-name"),
        pytest.param({"name": "iris", "task": "forecasting"}, 400, "task", id="unknown-task"),
        pytest.param({"name": "iris", "colour": "red"}, 400, "colour", id="unknown-field"),
    ],
)
def test_create_model_rejects_bad_input(tenant_a, body, status, field):
    response = tenant_a.jwt_client().post("/api/v1/models", {"org": "acme", **body}, format="json")
    assert response.status_code == status
    assert field in [e["field"] for e in response.json()["errors"]]
    assert RegisteredModel.objects.count() == 0


def test_duplicate_model_name_is_a_conflict(owner):
    response = create_model(owner)
    assert response.status_code == 409
    assert RegisteredModel.objects.count() == 1


def test_viewer_cannot_upload(tenant_a, owner):
    from accounts.tests.test_organizations_and_members import member_client

    viewer, _ = member_client(tenant_a, "viewer")
    assert viewer.get("/api/v1/models/acme/iris").status_code == 200
    response = upload(viewer, f.joblib_bytes(f.iris_model()))
    assert response.status_code == 403


# --- uploads -----------------------------------------------------------------------------


def test_upload_joblib_describes_the_model(owner):
    content = f.joblib_bytes(f.iris_model())
    response = upload(owner, content, metrics={"accuracy": 0.97}, params={"C": 1.0}, description="first")
    assert response.status_code == 201, response.content
    version = response.json()
    assert version["number"] == 1
    assert version["sha256"] == hashlib.sha256(content).hexdigest()
    assert version["size_bytes"] == len(content)
    assert version["format"] == "joblib"
    assert version["sklearn_version"] == sklearn.__version__
    assert version["serving_sklearn_version"] == sklearn.__version__
    assert version["sklearn_version_mismatch"] is False
    assert version["estimator_class"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert version["task"] == "classification"
    assert version["classes"] == [0, 1, 2]
    assert version["n_features"] == 4
    assert version["has_predict_proba"] is True
    assert version["signature"]["source"] == "n_features_in"
    assert version["feature_names"] == ["f0", "f1", "f2", "f3"]
    assert version["metrics"] == {"accuracy": 0.97}
    assert version["params"] == {"C": 1.0}
    assert version["stage"] == "none"
    assert AuditEvent.objects.filter(action="version.created").count() == 1
    assert owner.get("/api/v1/models/acme/iris").json()["task"] == "classification"


@pytest.mark.parametrize(
    "name, build, fmt",
    [
        pytest.param("model.pkl", lambda: f.pickle_bytes(f.iris_model(), protocol=5), "pickle", id="pickle-5"),
        pytest.param("model.pkl", lambda: f.pickle_bytes(f.iris_model(), protocol=2), "pickle", id="pickle-2"),
        pytest.param("model.skops", lambda: f.skops_bytes(f.iris_model()), "skops", id="skops"),
    ],
)
def test_upload_each_format(owner, name, build, fmt):
    response = upload(owner, build(), name=name)
    assert response.status_code == 201, response.content
    assert response.json()["format"] == fmt
    assert response.json()["estimator_class"].endswith("LogisticRegression")


@pytest.mark.parametrize("serialization", ["cloudpickle", "pickle", "skops"])
def test_upload_mlflow_zip_uses_its_signature(owner, tmp_path, serialization):
    import pandas as pd

    example = pd.DataFrame([f.IRIS_ROW], columns=f.IRIS_FEATURES)
    content = f.mlflow_zip_bytes(f.iris_frame_model(), tmp_path, input_example=example, serialization_format=serialization)
    response = upload(owner, content, name="model.zip")
    assert response.status_code == 201, response.content
    version = response.json()
    assert version["format"] == "mlflow"
    assert version["signature"]["source"] == "mlflow"
    assert version["feature_names"] == f.IRIS_FEATURES
    assert version["input_example"] is not None


def test_signature_from_input_example_names_columns(owner):
    example = [dict(zip(f.IRIS_FEATURES, f.IRIS_ROW, strict=True))]
    response = upload(owner, f.joblib_bytes(f.iris_model()), input_example=example)
    assert response.status_code == 201, response.content
    assert response.json()["signature"] == {
        "inputs": [{"name": n, "type": "double"} for n in f.IRIS_FEATURES],
        "source": "input_example",
        "named": True,
    }


def test_signature_from_reference_data(owner):
    csv = "a,b,c\n0.1,1,2.5\n0.2,2,3.5\n0.3,3,1.5\n"
    response = upload(owner, f.joblib_bytes(f.regression_model()), reference_data=f.upload_file(csv.encode(), "reference.csv"))
    assert response.status_code == 201, response.content
    version = response.json()
    assert version["signature"]["source"] == "reference_data"
    assert version["signature"]["inputs"] == [
        {"name": "a", "type": "double"},
        {"name": "b", "type": "long"},
        {"name": "c", "type": "double"},
    ]
    assert version["reference_rows"] == 3
    assert version["task"] == "regression"


def test_signature_from_feature_names_in(owner):
    response = upload(owner, f.joblib_bytes(f.iris_frame_model()))
    assert response.status_code == 201
    assert response.json()["signature"]["source"] == "feature_names_in"
    assert response.json()["feature_names"] == f.IRIS_FEATURES


def test_version_saved_with_other_sklearn_is_flagged(owner):
    content = f.pickle_bytes(f.iris_model())
    current = sklearn.__version__.encode()
    assert current in content
    older = b"1.0.2"
    assert len(older) == len(current)  # same length keeps the pickle's framing valid
    response = upload(owner, content.replace(current, older), name="model.pkl")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["sklearn_version"] == older.decode()
    assert body["sklearn_version_mismatch"] is True
    assert body["warnings"][0]["code"] == "sklearn_version_mismatch"


def test_versions_are_numbered_per_model(owner):
    for expected in (1, 2, 3):
        assert upload(owner, f.joblib_bytes(f.iris_model())).json()["number"] == expected
    listed = owner.get("/api/v1/models/acme/iris/versions").json()
    assert [v["number"] for v in listed["results"]] == [3, 2, 1]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_naming_the_global_and_nothing_is_stored(owner, tmp_path, settings):
    marker = tmp_path / "pwned"
    response = upload(owner, pickle.dumps(_Exploit(marker)), name="model.pkl")
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "unsafe_artifact"
    assert problem["refused_globals"] == ["posix.system"]
    assert "posix.system" in problem["detail"]
    assert not marker.exists()
    assert ModelVersion.objects.count() == 0
    assert stored_files(settings) == []


def test_model_failing_on_its_input_example_is_refused_with_its_error(owner):
    response = upload(owner, f.joblib_bytes(f.iris_model()), input_example=[[1.0, 2.0]])
    assert response.status_code in (400, 422)
    assert "4 features" in response.json()["detail"] or "features" in response.json()["detail"]
    assert ModelVersion.objects.count() == 0


def test_upload_over_the_size_limit_is_413(owner, settings):
    settings.MAX_UPLOAD_BYTES = 100
    response = upload(owner, f.joblib_bytes(f.iris_model()))
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert ModelVersion.objects.count() == 0


@pytest.mark.parametrize(
    "fields, field",
    [
        pytest.param({"metrics": "{not json"}, "metrics", id="metrics-not-json"),
        pytest.param({"metrics": {"accuracy": "high"}}, "metrics.accuracy", id="metric-not-a-number"),
        pytest.param({"params": [1, 2]}, "params", id="params-not-object"),
        pytest.param({"input_example": "[[1,2],[3]]"}, "input_example", id="ragged-example"),
        pytest.param(
            {"input_example": '{"columns": ["a", "b"], "data": [[1, 2], [3]]}'}, "input_example", id="split-example-short-row"
        ),
        pytest.param({"colour": "red"}, "colour", id="unknown-field"),
    ],
)
def test_upload_rejects_bad_fields(owner, fields, field):
    response = upload(owner, f.joblib_bytes(f.iris_model()), **fields)
    assert response.status_code == 400
    assert field in [e["field"] for e in response.json()["errors"]]
    assert ModelVersion.objects.count() == 0


def test_upload_without_file_names_the_field(owner):
    response = owner.post("/api/v1/models/acme/iris/versions", {"description": "x"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "file", "message": "required"}]


def test_garbage_file_is_refused(owner):
    response = upload(owner, b"this is not a model at all", name="model.bin")
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_artifact"
    assert ModelVersion.objects.count() == 0


# --- stages, releases, rollback ----------------------------------------------------------


def stage(client, number, value, reason=""):
    return client.post(f"/api/v1/models/acme/iris/versions/{number}/stage", {"stage": value, "reason": reason}, format="json")


def test_promotion_rollback_and_releases(owner, tenant_a):
    for _ in range(2):
        upload(owner, f.joblib_bytes(f.iris_model()))
    assert stage(owner, 1, "production", "first launch").json()["stage"] == "production"
    assert stage(owner, 2, "production").json()["stage"] == "production"
    versions = {v["number"]: v["stage"] for v in owner.get("/api/v1/models/acme/iris/versions").json()["results"]}
    assert versions == {1: "archived", 2: "production"}
    assert ModelVersion.objects.filter(stage="production").count() == 1
    rolled = owner.post("/api/v1/models/acme/iris/rollback", {"reason": "bad metrics"}, format="json")
    assert rolled.status_code == 200
    assert rolled.json()["from_version"] == 2 and rolled.json()["to_version"] == 1
    assert owner.get("/api/v1/models/acme/iris").json()["production_version"] == 1
    releases = owner.get("/api/v1/models/acme/iris/releases").json()["results"]
    assert [(r["number"], r["kind"], r["from_version"], r["to_version"]) for r in releases] == [
        (3, "rollback", 2, 1),
        (2, "promote", 1, 2),
        (1, "promote", None, 1),
    ]
    assert releases[0]["actor"] == tenant_a.user.email
    assert releases[0]["reason"] == "bad metrics"
    assert releases[2]["reason"] == "first launch"


def test_rollback_without_previous_production_is_a_conflict(owner):
    upload(owner, f.joblib_bytes(f.iris_model()))
    assert owner.post("/api/v1/models/acme/iris/rollback", format="json").status_code == 409
    stage(owner, 1, "production")
    response = owner.post("/api/v1/models/acme/iris/rollback", format="json")
    assert response.status_code == 409
    assert "no previous production version" in response.json()["detail"]
    assert Release.objects.count() == 1


def test_archiving_the_production_version_retires_it_as_a_release(owner):
    upload(owner, f.joblib_bytes(f.iris_model()))
    stage(owner, 1, "production")
    assert stage(owner, 1, "archived").json()["stage"] == "archived"
    assert owner.get("/api/v1/models/acme/iris").json()["production_version"] is None
    assert Release.objects.order_by("-number").first().kind == "retire"


@pytest.mark.parametrize("value", ["live", "", "none"])
def test_bad_stage_is_rejected(owner, value):
    upload(owner, f.joblib_bytes(f.iris_model()))
    response = stage(owner, 1, value)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "stage"


def test_promoting_the_production_version_again_is_a_conflict(owner):
    upload(owner, f.joblib_bytes(f.iris_model()))
    stage(owner, 1, "production")
    assert stage(owner, 1, "production").status_code == 409


def test_versions_cannot_be_changed(owner):
    """A version's artifact is immutable: PATCH takes only the owner's serving choice (`compiled`)."""
    sha256 = upload(owner, f.joblib_bytes(f.iris_model())).json()["sha256"]
    response = owner.patch("/api/v1/models/acme/iris/versions/1", {"sha256": "0" * 64}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "sha256", "message": "Unknown field."}]
    assert owner.get("/api/v1/models/acme/iris/versions/1").json()["sha256"] == sha256
    assert owner.delete("/api/v1/models/acme/iris/versions/1").status_code == 405
