"""Tree ensembles served by their compiled form through the whole path: upload sandbox, runner, HTTP API."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from prometheus_client import REGISTRY
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from registry import artifacts
from registry.loaders import compiled
from registry.models import ModelVersion
from registry.tests import factories as f
from registry.tests.test_api_registry import create_model, upload

pytestmark = pytest.mark.django_db(transaction=False)

LABELS = np.array(["setosa", "versicolor", "virginica"])


@pytest.fixture(scope="module")
def forest():
    x, y = f.iris_data()
    return RandomForestClassifier(n_estimators=20, random_state=0).fit(x, LABELS[y])


@pytest.fixture
def owner(tenant_a):
    client = tenant_a.jwt_client()
    assert create_model(client).status_code == 201
    return client


def served_by(runtime: str) -> float:
    return REGISTRY.get_sample_value("modelhost_runner_predictions_total", {"runtime": runtime}) or 0.0


def predict(client, rows, number=1):
    return client.post(
        f"/api/v1/models/acme/iris/versions/{number}/predict",
        {"inputs": rows, "parameters": {"probabilities": True}},
        format="json",
    )


def test_a_forest_is_served_by_its_compiled_form_with_scikit_learns_answers(owner, tenant_a, forest):
    response = upload(owner, f.joblib_bytes(forest))
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["runtime"] == "onnx"
    assert body["runtime_reason"].startswith("verified bitwise against scikit-learn on ")
    assert body["compiled"]["enabled"] is True
    assert body["compiled"]["check"]["label_disagreements"] == 0 and body["compiled"]["check"]["max_abs_diff"] == 0.0
    rows = (f.iris_data()[0][::7] + 0.05).tolist()
    before = served_by("onnx")
    answer = predict(tenant_a.key_client(), rows)
    assert answer.status_code == 200, answer.content
    assert served_by("onnx") == before + 1
    assert answer.json()["predictions"] == forest.predict(np.array(rows)).tolist()  # strings stay strings
    assert answer.json()["probabilities"] == forest.predict_proba(np.array(rows)).tolist()
    browser = Client()
    browser.force_login(tenant_a.user)
    page = browser.get("/models/acme/iris/")
    assert page.status_code == 200
    assert b"runtime: compiled (ONNX Runtime, verified exact)" in page.content


def test_an_owner_can_turn_the_compiled_form_off_at_upload_and_back_on_later(
    owner, tenant_a, forest, django_capture_on_commit_callbacks
):
    response = upload(owner, f.joblib_bytes(forest), compiled="false")
    assert response.status_code == 201, response.content
    assert response.json()["runtime"] == "sklearn"
    assert response.json()["runtime_reason"] == "The compiled form is turned off for this version by its owner."
    before = served_by("sklearn")
    assert predict(tenant_a.key_client(), [f.IRIS_ROW]).json()["predictions"] == forest.predict([f.IRIS_ROW]).tolist()
    assert served_by("sklearn") == before + 1

    with django_capture_on_commit_callbacks(execute=True):  # the change reaches every process's routes on commit
        turned_on = owner.patch("/api/v1/models/acme/iris/versions/1", {"compiled": True}, format="json")
    assert turned_on.status_code == 200 and turned_on.json()["runtime"] == "onnx"
    before = served_by("onnx")
    row = [6.1, 2.8, 4.7, 1.2]  # a row not in the prediction cache
    assert predict(tenant_a.key_client(), [row]).json()["predictions"] == forest.predict([row]).tolist()
    assert served_by("onnx") == before + 1

    with django_capture_on_commit_callbacks(execute=True):
        turned_off = owner.patch("/api/v1/models/acme/iris/versions/1", {"compiled": False}, format="json")
    assert turned_off.json()["runtime"] == "sklearn"
    before = served_by("sklearn")
    assert predict(tenant_a.key_client(), [[6.3, 3.3, 6.0, 2.5]]).status_code == 200
    assert served_by("sklearn") == before + 1


@pytest.mark.parametrize(("fields", "field"), [({"compiled": "maybe"}, "compiled")])
def test_upload_refuses_a_compiled_flag_that_is_not_a_boolean(owner, forest, fields, field):
    response = upload(owner, f.joblib_bytes(forest), **fields)
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": field, "message": "expected true or false"}]


def test_a_model_that_is_not_a_tree_ensemble_says_why_it_is_served_by_scikit_learn(owner):
    x, y = f.iris_data()
    model = LogisticRegression(max_iter=500, class_weight="balanced").fit(x, y)
    body = upload(owner, f.joblib_bytes(model)).json()
    assert body["runtime"] == "sklearn"
    assert body["runtime_reason"] == "LogisticRegression is not a tree ensemble the platform compiles"


def test_another_organization_cannot_change_a_versions_runtime(owner, tenant_b, forest):
    assert upload(owner, f.joblib_bytes(forest)).status_code == 201
    foreign = tenant_b.jwt_client().patch("/api/v1/models/acme/iris/versions/1", {"compiled": False}, format="json")
    missing = tenant_b.jwt_client().patch("/api/v1/models/acme/nothing/versions/1", {"compiled": False}, format="json")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.content == missing.content
    assert ModelVersion.objects.get(number=1, registered_model__name="iris").use_compiled is True


def test_reverify_compiled_passes_on_stored_models_and_fails_when_one_no_longer_matches(owner, forest, monkeypatch, capsys):
    assert upload(owner, f.joblib_bytes(forest)).status_code == 201
    call_command("reverify_compiled")
    assert "1 compiled versions re-verified." in capsys.readouterr().out

    # A runtime that moves split points (thresholds compared in float32) must fail the check.
    version = ModelVersion.objects.get(number=1, registered_model__name="iris")

    def regressed_check(version):
        figures = compiled.verify_compiled(estimator=forest, data=_float32_conversion(forest), examples=None)
        assert figures["passed"] is False
        return {"passed": False, "reason": compiled.failure_reason(figures), "changed": True}

    monkeypatch.setattr(artifacts, "recheck_compiled", regressed_check)
    with pytest.raises(CommandError, match="1 of 1 compiled versions no longer match scikit-learn"):
        call_command("reverify_compiled")
    assert version.compiled_sha256


def _float32_conversion(estimator) -> bytes:
    plan = compiled.plan_for(estimator)
    for tree in plan.trees:
        tree.threshold = tree.threshold.astype(np.float32).astype(np.float64)
    return compiled.onnx_bytes(plan)
