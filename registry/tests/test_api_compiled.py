"""Tree ensembles served by their compiled form through the whole path: upload sandbox, compile, runner, HTTP API.

The compile runs here by calling ``services.compile_version``, what the Celery task runs
(test_compile_worker.py runs it on a real worker); its on-commit signal runs with
``django_capture_on_commit_callbacks(execute=True)``, as a commit would run it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from prometheus_client import REGISTRY
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from registry import services
from registry.loaders import compiled
from registry.models import COMPILE_PENDING_REASON, ModelVersion
from registry.storage import model_storage
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


def compile_queued(callbacks) -> int:
    return sum(1 for callback in callbacks if "_compile_on_commit" in callback.__qualname__)


def compile_now(capture, number=1) -> str:
    """Run the compile the upload queued, and the signal its commit sends."""
    version = ModelVersion.objects.get(number=number, registered_model__name="iris")
    with capture(execute=True):
        return services.compile_version(version_id=version.id)


def test_an_upload_is_ready_on_scikit_learn_and_served_compiled_once_its_compile_is_verified(
    owner, tenant_a, forest, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = upload(owner, f.joblib_bytes(forest))
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["runtime"], body["runtime_reason"], body["compiled"]["status"]) == (
        "sklearn",
        COMPILE_PENDING_REASON,
        "compiling",
    )
    assert body["compiled"]["check"] == {}
    assert compile_queued(callbacks) == 1
    rows = (f.iris_data()[0][::7] + 0.05).tolist()
    before = served_by("sklearn")
    first = predict(tenant_a.key_client(), rows[:3])
    assert first.status_code == 200 and served_by("sklearn") == before + 1  # ready before the compile, in the runner
    assert first.json()["predictions"] == forest.predict(np.array(rows[:3])).tolist()

    assert compile_now(django_capture_on_commit_callbacks) == "verified"
    body = owner.get("/api/v1/models/acme/iris/versions/1").json()
    assert (body["runtime"], body["compiled"]["status"]) == ("onnx", "verified")
    assert body["runtime_reason"].startswith("verified bitwise against scikit-learn on ")
    assert body["compiled"]["check"]["label_disagreements"] == 0 and body["compiled"]["check"]["max_abs_diff"] == 0.0
    before = served_by("onnx")
    answer = predict(tenant_a.key_client(), rows)  # the runner holding the version loads its compiled form now
    assert answer.status_code == 200, answer.content
    assert served_by("onnx") == before + 1
    assert answer.json()["predictions"] == forest.predict(np.array(rows)).tolist()  # strings stay strings
    assert answer.json()["probabilities"] == forest.predict_proba(np.array(rows)).tolist()
    assert compile_now(django_capture_on_commit_callbacks) == "verified"  # a second run changes nothing
    browser = Client()
    browser.force_login(tenant_a.user)
    page = browser.get("/models/acme/iris/")
    assert page.status_code == 200
    assert b"runtime: compiled (ONNX Runtime, verified exact)" in page.content


def test_an_owner_who_turns_the_compiled_form_off_at_upload_skips_the_compile_until_turning_it_on(
    owner, tenant_a, forest, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = upload(owner, f.joblib_bytes(forest), compiled="false")
    assert response.status_code == 201, response.content
    assert compile_queued(callbacks) == 0
    body = response.json()
    assert (body["runtime"], body["compiled"]["status"]) == ("sklearn", "off")
    assert body["runtime_reason"] == "The compiled form is turned off for this version by its owner."
    assert compile_now(django_capture_on_commit_callbacks) == "off"  # a stray task compiles nothing
    assert ModelVersion.objects.get(number=1, registered_model__name="iris").compiled_artifact == ""
    before = served_by("sklearn")
    assert predict(tenant_a.key_client(), [f.IRIS_ROW]).json()["predictions"] == forest.predict([f.IRIS_ROW]).tolist()
    assert served_by("sklearn") == before + 1

    with django_capture_on_commit_callbacks() as callbacks:
        turned_on = owner.patch("/api/v1/models/acme/iris/versions/1", {"compiled": True}, format="json")
    assert turned_on.status_code == 200
    assert (turned_on.json()["runtime"], turned_on.json()["compiled"]["status"]) == ("sklearn", "compiling")
    assert compile_queued(callbacks) == 1
    assert compile_now(django_capture_on_commit_callbacks) == "verified"
    before = served_by("onnx")
    row = [6.1, 2.8, 4.7, 1.2]  # a row not in the prediction cache
    assert predict(tenant_a.key_client(), [row]).json()["predictions"] == forest.predict([row]).tolist()
    assert served_by("onnx") == before + 1

    with django_capture_on_commit_callbacks(execute=True):
        turned_off = owner.patch("/api/v1/models/acme/iris/versions/1", {"compiled": False}, format="json")
    assert (turned_off.json()["runtime"], turned_off.json()["compiled"]["status"]) == ("sklearn", "off")
    before = served_by("sklearn")
    assert predict(tenant_a.key_client(), [[6.3, 3.3, 6.0, 2.5]]).status_code == 200
    assert served_by("sklearn") == before + 1


@pytest.mark.parametrize(("fields", "field"), [({"compiled": "maybe"}, "compiled")])
def test_upload_refuses_a_compiled_flag_that_is_not_a_boolean(owner, forest, fields, field):
    response = upload(owner, f.joblib_bytes(forest), **fields)
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": field, "message": "expected true or false"}]


def test_a_model_that_is_not_a_tree_ensemble_says_why_it_is_served_by_scikit_learn(owner, django_capture_on_commit_callbacks):
    x, y = f.iris_data()
    model = LogisticRegression(max_iter=500, class_weight="balanced").fit(x, y)
    with django_capture_on_commit_callbacks() as callbacks:
        body = upload(owner, f.joblib_bytes(model)).json()
    assert compile_queued(callbacks) == 0
    assert (body["runtime"], body["compiled"]["status"]) == ("sklearn", "none")
    assert body["runtime_reason"] == "LogisticRegression is not a tree ensemble the platform compiles"


def test_another_organization_cannot_change_a_versions_runtime(owner, tenant_b, forest):
    assert upload(owner, f.joblib_bytes(forest)).status_code == 201
    foreign = tenant_b.jwt_client().patch("/api/v1/models/acme/iris/versions/1", {"compiled": False}, format="json")
    missing = tenant_b.jwt_client().patch("/api/v1/models/acme/nothing/versions/1", {"compiled": False}, format="json")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.content == missing.content
    assert ModelVersion.objects.get(number=1, registered_model__name="iris").use_compiled is True


def _moved_threshold(estimator) -> bytes:
    """The estimator's conversion with the first tree's root split moved: a wrong compiled form."""
    plan = compiled.plan_for(estimator)
    plan.trees[0].threshold[0] += 0.25
    return compiled.onnx_bytes(plan)


def _overwrite_stored(version: ModelVersion, data: bytes, *, record_sha256: bool) -> None:
    with open(model_storage().path(version.compiled_artifact.name), "wb") as handle:
        handle.write(data)
    if record_sha256:  # as a broken converter would have recorded it: the bytes match their record
        ModelVersion.objects.filter(id=version.id).update(compiled_sha256=hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    ("record_sha256", "reason"),
    [
        pytest.param(
            True, "re-verification failed: verification failed: the compiled bytes are not the conversion", id="moved-threshold"
        ),
        pytest.param(
            False,
            "re-verification failed: the stored compiled artifact is missing or does not match its recorded sha256",
            id="bytes-changed",
        ),
    ],
)
def test_reverify_compiled_fails_on_a_corrupted_stored_form_and_the_version_falls_back_to_scikit_learn(
    owner, tenant_a, forest, capsys, django_capture_on_commit_callbacks, record_sha256, reason
):
    assert upload(owner, f.joblib_bytes(forest)).status_code == 201
    assert compile_now(django_capture_on_commit_callbacks) == "verified"
    call_command("reverify_compiled")
    assert "1 compiled versions re-verified." in capsys.readouterr().out
    version = ModelVersion.objects.get(number=1, registered_model__name="iris")
    row = [5.8, 2.7, 5.1, 1.9]
    before = served_by("onnx")
    assert predict(tenant_a.key_client(), [row]).status_code == 200
    assert served_by("onnx") == before + 1

    _overwrite_stored(version, _moved_threshold(forest), record_sha256=record_sha256)
    with pytest.raises(
        CommandError, match="1 of 1 compiled versions no longer match scikit-learn and are now served by it: acme/iris@v1"
    ):
        call_command("reverify_compiled")
    assert f"FAILED acme/iris@v1: {reason}" in capsys.readouterr().out
    body = owner.get("/api/v1/models/acme/iris/versions/1").json()
    assert (body["runtime"], body["compiled"]["status"]) == ("sklearn", "none")
    assert body["runtime_reason"].startswith(reason)
    assert not model_storage().exists(version.compiled_artifact.name)
    before = served_by("sklearn")
    answer = predict(tenant_a.key_client(), [[6.0, 2.9, 4.5, 1.5]])
    assert answer.status_code == 200 and served_by("sklearn") == before + 1
    assert answer.json()["predictions"] == forest.predict([[6.0, 2.9, 4.5, 1.5]]).tolist()
    call_command("reverify_compiled")  # nothing compiled is left to check
    assert "0 compiled versions re-verified." in capsys.readouterr().out


def test_reverify_compiled_stores_the_new_conversion_when_only_the_bytes_differ(
    owner, forest, capsys, django_capture_on_commit_callbacks
):
    """A newer converter writes other bytes for the same trees: exact answers, the new bytes kept."""
    assert upload(owner, f.joblib_bytes(forest)).status_code == 201
    assert compile_now(django_capture_on_commit_callbacks) == "verified"
    version = ModelVersion.objects.get(number=1, registered_model__name="iris")
    converted = compiled.onnx_bytes(compiled.plan_for(forest))
    import onnx

    graph = onnx.load_from_string(converted)
    graph.producer_version = "an older converter"
    _overwrite_stored(version, graph.SerializeToString(), record_sha256=True)
    call_command("reverify_compiled")
    assert "(new compiled bytes stored)" in capsys.readouterr().out
    old_name = version.compiled_artifact.name
    version.refresh_from_db()
    assert version.runtime == "onnx" and version.compiled_sha256 == hashlib.sha256(converted).hexdigest()
    assert model_storage().exists(version.compiled_artifact.name) and not model_storage().exists(old_name)


def test_compile_pending_compiles_the_versions_a_broker_outage_left_waiting(
    owner, forest, capsys, django_capture_on_commit_callbacks
):
    # The upload's on-commit queueing never runs here: as if the broker had been down.
    assert upload(owner, f.joblib_bytes(forest)).status_code == 201
    assert upload(owner, f.joblib_bytes(forest), compiled="false").status_code == 201
    with django_capture_on_commit_callbacks(execute=True):
        call_command("compile_pending", "--here")
    version = ModelVersion.objects.get(number=1, registered_model__name="iris")
    assert f"version {version.id}: verified\n1 versions compiled." in capsys.readouterr().out
    assert [v.compiled_status for v in ModelVersion.objects.order_by("number")] == ["verified", "off"]
    call_command("compile_pending", "--here")
    assert "0 versions compiled." in capsys.readouterr().out
