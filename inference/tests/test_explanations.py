"""parameters.explain on native predict: contributions that add up, for each kind of explainer.

Every model here is a real scikit-learn estimator served the way production serves it: the
linear fast path in the web, everything else in the suite's real runner host (shap runs there).
"""

from __future__ import annotations

import functools
import io

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris, make_classification, make_regression
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from inference import prediction_cache
from registry import artifacts
from registry.tests import factories as f

pytestmark = pytest.mark.django_db
TOLERANCE = 1e-6


@functools.lru_cache
def _classification():
    x, y = make_classification(n_samples=300, n_features=5, n_informative=3, random_state=0)
    return x, y


@functools.lru_cache
def _regression():
    x, y = make_regression(n_samples=300, n_features=5, random_state=0)
    return x, y


@functools.lru_cache
def _iris():
    data = load_iris()
    return data.data, data.target


@functools.lru_cache
def fitted(name: str):
    """(estimator, rows it trained on) by name, fitted once per session."""
    makers = {
        "rf-classifier": (lambda: RandomForestClassifier(n_estimators=20, random_state=0), _iris),
        "rf-regressor": (lambda: RandomForestRegressor(n_estimators=20, random_state=0), _regression),
        "gb-classifier-binary": (lambda: GradientBoostingClassifier(n_estimators=20, random_state=0), _classification),
        "gb-classifier-multiclass": (lambda: GradientBoostingClassifier(n_estimators=20, random_state=0), _iris),
        "gb-regressor": (lambda: GradientBoostingRegressor(n_estimators=20, random_state=0), _regression),
        "hgb-classifier-binary": (lambda: HistGradientBoostingClassifier(max_iter=20, random_state=0), _classification),
        "hgb-regressor": (lambda: HistGradientBoostingRegressor(max_iter=20, random_state=0), _regression),
        "logistic-multiclass": (lambda: LogisticRegression(max_iter=500), _iris),
        "logistic-binary": (lambda: LogisticRegression(max_iter=500), _classification),
        "linear-regression": (lambda: LinearRegression(), _regression),
        "svc-pipeline": (lambda: make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)), _iris),
        "isolation-forest": (lambda: IsolationForest(n_estimators=10, random_state=0), _regression),
    }
    make, data = makers[name]
    x, y = data()
    estimator = make()
    if name == "isolation-forest":
        return estimator.fit(x), x
    return estimator.fit(x, y), x


def _explained_output(estimator, x: np.ndarray, predictions: list, method: str = "") -> np.ndarray:
    """What the explanation must add up to: scikit-learn's own numbers for each row."""
    from sklearn.base import is_classifier

    if not is_classifier(estimator):
        return estimator.predict(x)
    index = np.searchsorted(estimator.classes_, predictions)
    rows = np.arange(len(x))
    name = type(estimator[-1] if hasattr(estimator, "steps") else estimator).__name__
    if method != "sampling" and name in ("GradientBoostingClassifier", "HistGradientBoostingClassifier", "LogisticRegression"):
        scores = estimator.decision_function(x)
        if scores.ndim == 1:
            return np.where(index == 1, scores, -scores)
        return scores[rows, index]
    return estimator.predict_proba(x)[rows, index]


def _reference_csv(x: np.ndarray, names: list[str]) -> bytes:
    buffer = io.StringIO()
    pd.DataFrame(x, columns=names).to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def _version(tenant, name: str, estimator, *, reference: np.ndarray | None, promote: bool = True):
    from accounts.principals import Caller
    from registry import services
    from registry.models import RegisteredModel

    model = RegisteredModel.objects.filter(organization=tenant.organization, name=name).first()
    if model is None:
        model = services.create_model(caller=Caller(user=tenant.user), organization=tenant.organization, name=name)
    version = f.create_version(model, estimator, promote=promote)
    if reference is not None:
        names = [c["name"] for c in version.signature["inputs"]]
        version.reference_data.name = artifacts.store_bytes(
            _reference_csv(reference, names),
            f"orgs/{model.organization_id}/models/{model.pk}/versions/{version.number}/reference.csv",
        )
        version.reference_rows = len(reference)
        version.save(update_fields=["reference_data", "reference_rows"])
    return version


def _explain(client, path: str, rows, **parameters):
    return client.post(path, {"inputs": rows, "parameters": {"explain": True, **parameters}}, format="json")


@pytest.mark.parametrize(
    "name, method",
    [
        pytest.param("rf-classifier", "tree_shap", id="random-forest-classifier"),
        pytest.param("rf-regressor", "tree_shap", id="random-forest-regressor"),
        pytest.param("gb-classifier-binary", "tree_shap", id="gradient-boosting-binary"),
        pytest.param("gb-classifier-multiclass", "sampling", id="gradient-boosting-multiclass-sampling"),
        pytest.param("gb-regressor", "tree_shap", id="gradient-boosting-regressor"),
        pytest.param("hgb-classifier-binary", "tree_shap", id="hist-gradient-boosting-binary"),
        pytest.param("hgb-regressor", "tree_shap", id="hist-gradient-boosting-regressor"),
        pytest.param("logistic-multiclass", "linear", id="logistic-multiclass-in-the-web"),
        pytest.param("logistic-binary", "linear", id="logistic-binary-in-the-web"),
        pytest.param("linear-regression", "linear", id="linear-regression-in-the-web"),
        pytest.param("svc-pipeline", "sampling", id="pipeline-sampling"),
    ],
)
def test_contributions_add_up_to_the_models_output(tenant_a, name, method):
    estimator, x = fitted(name)
    version = _version(tenant_a, "m", estimator, reference=x[:200])
    rows = x[::37][:5] if method != "sampling" else x[::50][:3]
    response = _explain(tenant_a.key_client(), "/api/v1/models/acme/m/predict", rows.tolist())
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["explainer"]["method"] == method
    expected = _explained_output(estimator, rows, body["predictions"], method)
    names = [c["name"] for c in version.signature["inputs"]]
    for index, row in enumerate(body["explanations"]):
        assert list(row["contributions"]) == names
        total = row["base_value"] + sum(row["contributions"].values())
        assert abs(total - expected[index]) < TOLERANCE, (index, total, expected[index])
        assert abs(row["value"] - expected[index]) < TOLERANCE
        if version.task == "classification":
            assert row["class"] == body["predictions"][index]
        else:
            assert "class" not in row


def test_linear_decomposition_is_taken_against_the_reference_mean(tenant_a):
    estimator, x = fitted("linear-regression")
    reference = x[:100]
    _version(tenant_a, "m", estimator, reference=reference)
    row = x[250]
    body = _explain(tenant_a.key_client(), "/api/v1/models/acme/m/predict", [row.tolist()]).json()
    explanation = body["explanations"][0]
    mean = reference.mean(axis=0)
    assert np.allclose(list(explanation["contributions"].values()), estimator.coef_ * (row - mean), atol=1e-9)
    assert explanation["base_value"] == pytest.approx(float(estimator.intercept_ + estimator.coef_ @ mean), abs=1e-9)
    assert body["explainer"] == {"method": "linear", "output": "predicted value"}


def test_linear_model_with_feature_names_is_decomposed_in_the_runner(tenant_a):
    from registry.models import ModelVersion

    estimator = f.iris_frame_model()
    x, _ = f.iris_data()
    version = _version(tenant_a, "named", estimator, reference=x)
    assert ModelVersion.objects.get(pk=version.pk).serving_path == "runner"
    rows = [dict(zip(f.IRIS_FEATURES, x[120].tolist(), strict=True))]
    body = _explain(tenant_a.key_client(), "/api/v1/models/acme/named/predict", rows).json()
    assert body["explainer"] == {"method": "linear", "output": "decision function of the predicted class"}
    expected = _explained_output(estimator, pd.DataFrame(x[120:121], columns=f.IRIS_FEATURES), body["predictions"])[0]
    row = body["explanations"][0]
    assert abs(row["base_value"] + sum(row["contributions"].values()) - expected) < TOLERANCE


def test_an_explained_answer_is_cached_by_version_and_input(tenant_a):
    estimator, x = fitted("rf-classifier")
    _version(tenant_a, "m", estimator, reference=None)
    client = tenant_a.key_client()
    rows = x[:2].tolist()
    first = _explain(client, "/api/v1/models/acme/m/predict", rows)
    second = _explain(client, "/api/v1/models/acme/m/predict", rows)
    plain = client.post("/api/v1/models/acme/m/predict", {"inputs": rows}, format="json")
    assert (first["X-Cache"], second["X-Cache"], plain["X-Cache"]) == ("MISS", "HIT", "MISS")
    assert second.json()["explanations"] == first.json()["explanations"]
    assert second.json()["explainer"] == first.json()["explainer"]
    assert "explanations" not in plain.json()
    plain_again = client.post("/api/v1/models/acme/m/predict", {"inputs": rows}, format="json")
    assert plain_again["X-Cache"] == "HIT" and "explanations" not in plain_again.json()


def test_another_version_never_answers_with_this_versions_explanation(tenant_a):
    estimator, x = fitted("rf-classifier")
    _version(tenant_a, "m", estimator, reference=None)
    other, _ = fitted("logistic-multiclass")
    _version(tenant_a, "m", other, reference=x, promote=False)
    client = tenant_a.key_client()
    rows = x[:1].tolist()
    one = _explain(client, "/api/v1/models/acme/m/versions/1/predict", rows)
    two = _explain(client, "/api/v1/models/acme/m/versions/2/predict", rows)
    assert (one["X-Cache"], two["X-Cache"]) == ("MISS", "MISS")
    assert (one.json()["explainer"]["method"], two.json()["explainer"]["method"]) == ("tree_shap", "linear")
    key = functools.partial(prediction_cache.cache_key, canonical_input=b"[[1.0]]", want_proba=False, explain=True)
    assert key(version_id=1) != key(version_id=2)
    assert prediction_cache.cache_key(version_id=1, canonical_input=b"[[1.0]]", want_proba=False) != key(version_id=1)


def test_another_tenant_cannot_get_an_explanation(tenant_a, tenant_b):
    estimator, x = fitted("rf-classifier")
    _version(tenant_a, "m", estimator, reference=None)
    rows = x[:1].tolist()
    assert _explain(tenant_a.key_client(), "/api/v1/models/acme/m/predict", rows).status_code == 200  # now cached
    for path in ("/api/v1/models/acme/m/predict", "/api/v1/models/acme/m/versions/1/predict"):
        response = _explain(tenant_b.key_client(), path, rows)
        missing = _explain(tenant_b.key_client(), path.replace("/m/", "/nothing-here/"), rows)
        assert response.status_code == 404
        assert response.content == missing.content
        assert b"contributions" not in response.content


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("yes", id="string"),
        pytest.param(1, id="number"),
        pytest.param(None, id="null"),
        pytest.param({"class": 1}, id="object"),
    ],
)
def test_bad_explain_value_is_400_naming_the_field(tenant_a, value):
    estimator, x = fitted("rf-classifier")
    _version(tenant_a, "m", estimator, reference=None)
    response = tenant_a.key_client().post(
        "/api/v1/models/acme/m/predict", {"inputs": x[:1].tolist(), "parameters": {"explain": value}}, format="json"
    )
    assert response.status_code == 400
    problem = response.json()
    assert problem["code"] == "invalid_input"
    assert problem["errors"] == [{"field": "parameters.explain", "message": "expected a boolean"}]


def test_more_rows_than_the_explain_limit_is_413(tenant_a, settings):
    settings.EXPLAIN_MAX_ROWS = 3
    estimator, x = fitted("rf-classifier")
    _version(tenant_a, "m", estimator, reference=None)
    client = tenant_a.key_client()
    response = _explain(client, "/api/v1/models/acme/m/predict", x[:4].tolist())
    assert response.status_code == 413
    assert response.json()["errors"] == [{"field": "inputs", "message": "more than 3 rows to explain"}]
    assert client.post("/api/v1/models/acme/m/predict", {"inputs": x[:4].tolist()}, format="json").status_code == 200


def test_sampling_explainer_row_limit_is_413(tenant_a, settings):
    settings.EXPLAIN_SAMPLING_MAX_ROWS = 2
    estimator, x = fitted("svc-pipeline")
    _version(tenant_a, "m", estimator, reference=x)
    response = _explain(tenant_a.key_client(), "/api/v1/models/acme/m/predict", x[:3].tolist())
    assert response.status_code == 413, response.content
    assert response.json()["detail"] == "The sampling explainer takes at most 2 rows a request; this one has 3."


@pytest.mark.parametrize(
    "name, fragment",
    [
        pytest.param(
            "logistic-multiclass",
            "The linear decomposition is taken against the mean of the version's reference data",
            id="linear-in-the-web",
        ),
        pytest.param("svc-pipeline", "The sampling explainer compares each row with the version's reference data", id="sampling"),
    ],
)
def test_explainers_that_need_reference_data_say_so_with_422(tenant_a, name, fragment):
    estimator, x = fitted(name)
    _version(tenant_a, "m", estimator, reference=None)
    response = _explain(tenant_a.key_client(), "/api/v1/models/acme/m/predict", x[:1].tolist())
    assert response.status_code == 422, response.content
    problem = response.json()
    assert problem["code"] == "explanation_unavailable"
    assert problem["detail"].startswith(fragment)
    assert problem["detail"].endswith("upload the version again with reference_data (a CSV of training-like rows).")


def test_a_model_that_is_neither_classifier_nor_regressor_is_422(tenant_a):
    estimator, x = fitted("isolation-forest")
    _version(tenant_a, "m", estimator, reference=x)
    response = _explain(tenant_a.key_client(), "/api/v1/models/acme/m/predict", x[:1].tolist())
    assert response.status_code == 422
    assert response.json()["detail"] == "Explanations cover classifiers and regressors; this model is neither."


def _signed_in(tenant):
    from django.test import Client

    client = Client()
    client.force_login(tenant.user)
    return client


def test_model_page_loads_the_production_versions_feature_importance(tenant_a):
    estimator, x = fitted("linear-regression")
    reference = x[:80]  # fewer rows than EXPLAIN_MAX_ROWS: the sample is all of them
    _version(tenant_a, "m", estimator, reference=reference)
    client = _signed_in(tenant_a)
    page = client.get("/models/acme/m/")
    assert page.status_code == 200
    assert b'hx-get="/models/acme/m/versions/1/importance/"' in page.content
    fragment = client.get("/models/acme/m/versions/1/importance/", HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200
    html = fragment.content.decode()
    assert "over 80 rows of its reference data (linear explainer)" in html
    expected = np.abs(estimator.coef_ * (reference - reference.mean(axis=0))).mean(axis=0)
    order = np.argsort(-expected)
    labels = [part.split("</span>")[0] for part in html.split('<span class="bar-label">')[1:]]
    assert labels == [f"f{i}" for i in order]
    shown = [float(part.split("</span>")[0]) for part in html.split('<span class="bar-value">')[1:]]
    assert shown == [round(float(expected[i]), 3) for i in order]
    assert "<html" not in html  # the fragment alone
    full = client.get("/models/acme/m/versions/1/importance/")
    assert full.status_code == 200 and b"<html" in full.content and b"Feature importance of m v1" in full.content


def test_feature_importance_of_a_forest_comes_from_its_runner(tenant_a):
    estimator, x = fitted("rf-regressor")
    _version(tenant_a, "m", estimator, reference=x[:50])
    html = _signed_in(tenant_a).get("/models/acme/m/versions/1/importance/", HTTP_HX_REQUEST="true").content.decode()
    assert "over 50 rows of its reference data (tree shap explainer)" in html
    assert html.count('<span class="bar-label">') == 5


def test_feature_importance_without_reference_data_says_why(tenant_a):
    estimator, _ = fitted("rf-classifier")
    _version(tenant_a, "m", estimator, reference=None)
    html = _signed_in(tenant_a).get("/models/acme/m/versions/1/importance/", HTTP_HX_REQUEST="true").content.decode()
    assert 'id="importance-unavailable"' in html
    assert "Global importance is measured on the version&#x27;s reference data, and this version has none" in html


def test_another_tenant_gets_404_for_feature_importance(tenant_a, tenant_b):
    from web_tests.test_pages import without_csrf

    estimator, x = fitted("linear-regression")
    _version(tenant_a, "m", estimator, reference=x[:50])
    client = _signed_in(tenant_b)
    response = client.get("/models/acme/m/versions/1/importance/", HTTP_HX_REQUEST="true")
    missing = client.get("/models/acme/nothing-here/versions/1/importance/", HTTP_HX_REQUEST="true")
    assert response.status_code == missing.status_code == 404
    assert without_csrf(response.content) == without_csrf(missing.content)
    assert b"bar-label" not in response.content


def test_v2_lists_and_answers_the_explanation_outputs(tenant_a):
    estimator, x = fitted("gb-classifier-binary")
    _version(tenant_a, "m", estimator, reference=None)
    client = tenant_a.key_client()
    metadata = client.get("/v2/models/m").json()
    assert {"name": "explanation", "datatype": "FP64", "shape": [-1, 5]} in metadata["outputs"]
    assert {"name": "explanation_base", "datatype": "FP64", "shape": [-1]} in metadata["outputs"]
    rows = x[:3]
    body = {
        "inputs": [{"name": "input-0", "shape": [3, 5], "datatype": "FP64", "data": rows.ravel().tolist()}],
        "outputs": [{"name": "predict"}, {"name": "explanation"}, {"name": "explanation_base"}],
    }
    response = client.post("/v2/models/m/infer", body, format="json")
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["parameters"] == {"explainer": "tree_shap", "explained_output": "log-odds of the predicted class"}
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert outputs["explanation"]["shape"] == [3, 5] and outputs["explanation_base"]["shape"] == [3]
    values = np.array(outputs["explanation"]["data"]).reshape(3, 5)
    base = np.array(outputs["explanation_base"]["data"])
    expected = _explained_output(estimator, rows, outputs["predict"]["data"])
    assert np.abs(values.sum(axis=1) + base - expected).max() < TOLERANCE
    again = client.post("/v2/models/m/infer", body, format="json")
    assert again["X-Cache"] == "HIT" and again.json()["outputs"] == answer["outputs"]


def test_v2_explanation_of_a_model_without_an_explainer_is_422_in_v2s_shape(tenant_a):
    estimator, x = fitted("svc-pipeline")
    _version(tenant_a, "m", estimator, reference=None)
    body = {
        "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": x[0].tolist()}],
        "outputs": [{"name": "explanation"}],
    }
    response = tenant_a.key_client().post("/v2/models/m/infer", body, format="json")
    assert response.status_code == 422
    assert response.json()["error"].startswith("The sampling explainer compares each row with the version's reference data")


def test_mlflow_invocations_refuses_explain_naming_the_field(tenant_a):
    estimator, x = fitted("rf-classifier")
    _version(tenant_a, "m", estimator, reference=None)
    body = {"instances": x[:1].tolist(), "params": {"explain": True}}
    response = tenant_a.key_client().post("/api/v1/models/acme/m/invocations", body, format="json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "native /predict endpoint (parameters.explain)" in response.json()["message"]
