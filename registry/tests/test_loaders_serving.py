"""The serving artifact and the linear spec: bitwise scikit-learn's answers, tampering refused."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, SGDClassifier
from sklearn.svm import LinearSVC

from platform_site.errors import InvalidArtifact, UnsafeArtifact
from registry.loaders.serving import linear_predictor_from_spec, linear_spec_for, load_serving_artifact
from registry.tests import malicious

X, Y = load_iris(return_X_y=True)
Y_BINARY = (Y > 0).astype(np.int64)
# Rows the sandbox never probed: the spec must hold everywhere, not only where it was checked.
ROWS = np.random.default_rng(42).normal(loc=3.0, scale=4.0, size=(200, 4))


def _fit(model: Any, target: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the tiny iris fits
        return model.fit(X, target)


LINEAR_MODELS = {
    "LogisticRegression_binary": (lambda: _fit(LogisticRegression(), Y_BINARY), "expit"),
    "LogisticRegression_multiclass": (lambda: _fit(LogisticRegression(max_iter=500), Y), "softmax"),
    "LogisticRegression_float_classes": (lambda: _fit(LogisticRegression(), Y_BINARY.astype(np.float64)), "expit"),
    "LinearRegression": (lambda: _fit(LinearRegression(), X[:, 0] * 2.0), None),
    "LinearRegression_two_targets": (lambda: _fit(LinearRegression(), np.c_[X[:, 0], X[:, 1]]), None),
    "LinearSVC_binary": (lambda: _fit(LinearSVC(), Y_BINARY), None),
    "LinearSVC_multiclass": (lambda: _fit(LinearSVC(), Y), None),
    "SGDClassifier_hinge": (lambda: _fit(SGDClassifier(random_state=0), Y), None),
    "SGDClassifier_log_loss": (lambda: _fit(SGDClassifier(loss="log_loss", random_state=0), Y_BINARY), "expit"),
}


@pytest.mark.parametrize("name", list(LINEAR_MODELS))
def test_linear_spec_predicts_bitwise_like_the_estimator(name: str) -> None:
    build, proba = LINEAR_MODELS[name]
    model = build()
    spec = json.loads(json.dumps(linear_spec_for(model)))  # as storage hands it back
    assert spec["proba"] == proba
    predictions, probabilities = linear_predictor_from_spec(spec)(ROWS)
    expected = model.predict(ROWS)
    assert predictions.dtype == expected.dtype
    np.testing.assert_array_equal(predictions, expected, strict=True)
    if proba is None:
        assert probabilities is None
    else:
        np.testing.assert_array_equal(probabilities, model.predict_proba(ROWS), strict=True)


def test_linear_spec_holds_the_numbers_of_the_model() -> None:
    model = _fit(LogisticRegression(), Y_BINARY)
    assert linear_spec_for(model) == {
        "kind": "classifier",
        "coef": model.coef_.tolist(),
        "intercept": model.intercept_.tolist(),
        "classes": [0, 1],
        "n_features": 4,
        "proba": "expit",
    }


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: _fit(LogisticRegression(), np.array(["setosa", "other"])[Y_BINARY]), id="string_classes"),
        pytest.param(lambda: _fit(Ridge(), X[:, 0]), id="Ridge_own_predict"),
        pytest.param(lambda: _fit(LogisticRegression(), Y_BINARY.astype(bool)), id="bool_classes"),
    ],
)
def test_models_outside_the_fast_path_have_no_linear_spec(build: Any) -> None:
    assert linear_spec_for(build()) is None


def _valid_spec() -> dict[str, Any]:
    return {
        "kind": "classifier",
        "coef": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        "intercept": [0.0, 0.5, 1.0],
        "classes": [0, 1, 2],
        "n_features": 2,
        "proba": "softmax",
    }


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"kind": "clusterer"}, "kind must be one of classifier, regressor"),
        ({"n_features": 3}, "coef has 2 columns but n_features is 3"),
        ({"n_features": True}, "n_features must be a positive integer"),
        ({"coef": [[1.0, 2.0], [3.0, 4.0], [5.0]]}, "coef is ragged"),
        ({"coef": [[1.0, "2.0"], [3.0, 4.0], [5.0, 6.0]]}, "coef must be a non-empty 2-D list of numbers"),
        ({"coef": [1.0, 2.0]}, "coef must be a non-empty 2-D list of numbers"),
        ({"coef": [[True, False], [True, False], [True, False]]}, "coef must be a non-empty 2-D list of numbers"),
        ({"intercept": [0.0, 0.5]}, "intercept has 2 values for 3 rows of coef"),
        ({"intercept": ["0.0", "0.5", "1.0"]}, "intercept must be a non-empty 1-D list of numbers"),
        ({"classes": ["a", "b", "c"]}, "classes must be all integers or all floats"),
        ({"classes": [0, 1.0, 2]}, "classes must be all integers or all floats"),
        ({"classes": [0, 1]}, "2 classes for 3 rows of coef"),
        ({"proba": "expit"}, "proba expit does not fit 3 rows of coef"),
        ({"proba": "eval"}, "proba must be null, expit or softmax"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_tampered_linear_spec_is_refused_naming_the_problem(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidArtifact) as raised:
        linear_predictor_from_spec({**_valid_spec(), **change})
    assert raised.value.detail == f"The linear model spec is not usable: {problem}."


def test_regressor_spec_with_classes_is_refused() -> None:
    spec = {"kind": "regressor", "coef": [1.0, 2.0], "intercept": [0.5], "classes": [0, 1], "n_features": 2, "proba": None}
    with pytest.raises(InvalidArtifact, match="a regressor has no classes or probabilities"):
        linear_predictor_from_spec(spec)


def test_linear_predictor_refuses_input_of_the_wrong_width() -> None:
    predict = linear_predictor_from_spec(_valid_spec())
    with pytest.raises(ValueError, match="expected a 2-D float64 array of 2 columns"):
        predict(np.zeros((1, 3)))


@pytest.mark.parametrize("name", ["LogisticRegression_multiclass", "LinearSVC_binary"])
def test_serving_artifact_loads_through_the_hardened_loader(name: str) -> None:
    model = LINEAR_MODELS[name][0]()
    loaded = load_serving_artifact(data=pickle.dumps(model, protocol=5))
    np.testing.assert_array_equal(loaded.predict(ROWS), model.predict(ROWS), strict=True)


def test_serving_artifact_loader_refuses_hostile_bytes() -> None:
    with pytest.raises(UnsafeArtifact, match="numpy dtype object"):
        load_serving_artifact(data=malicious.object_pointer_regressor())


def test_serving_module_imports_without_django() -> None:
    code = "import sys, registry.loaders.serving\nprint('django' in sys.modules, 'celery' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "False False", result.stderr
