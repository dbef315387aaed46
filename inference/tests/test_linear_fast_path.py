"""The platform's own predict for plain linear models: bitwise scikit-learn's, or not used."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_iris, make_classification, make_regression
from sklearn.linear_model import (
    ElasticNet,
    LinearRegression,
    LogisticRegression,
    Perceptron,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from inference.linear_fast_path import fast_predict_for
from inference.model_cache import LoadedModel

RNG = np.random.default_rng(7)


def _iris():
    return load_iris(return_X_y=True)


def _binary():
    return make_classification(n_samples=300, n_features=6, random_state=1)


def _strings():
    x, y = _iris()
    return x, np.array(["setosa", "versicolor", "virginica"])[y]


def _regression():
    return make_regression(n_samples=200, n_features=5, random_state=2)


def _multi_output():
    return make_regression(n_samples=200, n_features=5, n_targets=3, random_state=3)


CASES = [
    ("logistic, 3 classes", LogisticRegression(max_iter=500), _iris),
    ("logistic, binary", LogisticRegression(max_iter=500), _binary),
    ("logistic, string classes", LogisticRegression(max_iter=500), _strings),
    ("sgd classifier", SGDClassifier(random_state=0), _binary),
    ("linear svc", LinearSVC(), _iris),
    ("perceptron", Perceptron(), _binary),
    ("linear regression", LinearRegression(), _regression),
    ("linear regression, 3 targets", LinearRegression(), _multi_output),
]


@pytest.mark.parametrize(("estimator", "data"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_fast_path_gives_scikit_learns_predictions_bit_for_bit(estimator, data):
    x, y = data()
    model = estimator.fit(x, y)
    fast = fast_predict_for(model)
    assert fast is not None
    rows = np.vstack([x, RNG.normal(scale=50, size=(500, x.shape[1])), x[:1] * 0])
    for batch in (rows, rows[:1], rows[7:8]):
        expected, got = model.predict(batch), fast(batch)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected)


class ThresholdTuned(LogisticRegression):
    """Overrides predict: the fast path must leave it to the class's own method."""

    def predict(self, x):
        return self.classes_.take((self.predict_proba(x)[:, 1] > 0.9).astype(int))


class ScaledScores(LogisticRegression):
    def decision_function(self, x):
        return super().decision_function(x) * -1


def test_fast_path_is_refused_for_what_it_does_not_compute_exactly():
    x, y = _binary()
    assert fast_predict_for(ThresholdTuned(max_iter=500).fit(x, y)) is None
    assert fast_predict_for(ScaledScores(max_iter=500).fit(x, y)) is None
    assert fast_predict_for(RidgeClassifier().fit(x, y)) is None  # its own predict (multilabel)
    assert fast_predict_for(Ridge().fit(*_regression())) is None  # its own predict
    assert fast_predict_for(ElasticNet().fit(*_regression())) is None  # its own decision function
    assert fast_predict_for(SGDRegressor(random_state=0).fit(*_regression())) is None  # its own predict
    assert fast_predict_for(make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)) is None
    import pandas as pd

    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    assert fast_predict_for(LogisticRegression(max_iter=500).fit(frame, y)) is None  # predicts on frames
    sparse = LogisticRegression(max_iter=500).fit(x, y)
    from scipy import sparse as sp

    sparse.coef_ = sp.csr_matrix(sparse.coef_)  # what sparsify() does
    assert fast_predict_for(sparse) is None


def test_loaded_model_takes_the_fast_path_only_for_checked_finite_float_input(monkeypatch):
    x, y = _iris()
    estimator = LogisticRegression(max_iter=500).fit(x, y)
    loaded = LoadedModel(version_id=1, estimator=estimator, has_proba=True, size_bytes=1, load_seconds=0.0, fast_predict=fast_predict_for(estimator), width=4)
    calls = []
    original = LogisticRegression.predict
    monkeypatch.setattr(LogisticRegression, "predict", lambda self, rows: calls.append(len(rows)) or original(self, rows))
    row = np.array([[5.1, 3.5, 1.4, 0.2]])

    predictions, probabilities = loaded.predict(row, want_proba=True, finite=True)
    assert calls == [] and predictions.tolist() == [0]
    np.testing.assert_array_equal(probabilities, estimator.predict_proba(row))

    loaded.predict(row, want_proba=False, finite=False)  # missing values allowed: scikit-learn decides
    loaded.predict(row.astype(np.float32), want_proba=False, finite=True)
    assert calls == [1, 1]
    with pytest.raises(ValueError, match="features"):  # the wrong width is scikit-learn's error, not a wrong answer
        loaded.predict(np.array([[5.1, 3.5, 1.4]]), want_proba=False, finite=True)
