"""A prediction runs with one warning filter (scikit-learn replays every filter per tree)."""
from __future__ import annotations

import threading
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier

from inference.model_cache import LoadedModel, one_warning_filter


class Noisy(ClassifierMixin, BaseEstimator):
    """Warns on every predict and records the filters it ran under."""

    def fit(self, x, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, x):
        self.seen = list(warnings.filters)
        warnings.warn("this model is noisy", UserWarning, stacklevel=1)
        return np.zeros(len(x), dtype=int)


def loaded(estimator) -> LoadedModel:
    return LoadedModel(version_id=1, estimator=estimator, has_proba=hasattr(estimator, "predict_proba"), size_bytes=1, load_seconds=0.0)


def test_predict_runs_with_one_filter_and_restores_the_processes_own():
    model = Noisy().fit([[0.0], [1.0]], [0, 1])
    with warnings.catch_warnings(record=True) as caught:
        before = warnings.filters
        loaded(model).predict(np.zeros((2, 1)), want_proba=False)
        assert warnings.filters is before
    assert model.seen == [("default", None, Warning, None, 0)]
    assert [str(w.message) for w in caught] == ["this model is noisy"]  # still shown


def test_a_forest_predicts_the_same_under_the_one_filter():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 5)), rng.integers(0, 2, 200)
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y)
    predictions, probabilities = loaded(forest).predict(x[:10], want_proba=True)
    assert predictions.tolist() == forest.predict(x[:10]).tolist()
    np.testing.assert_allclose(probabilities, forest.predict_proba(x[:10]))


def test_concurrent_predictions_leave_the_processes_filters_in_place():
    own = warnings.filters
    started, release = threading.Barrier(3), threading.Event()

    def hold():
        with one_warning_filter():
            started.wait()
            release.wait(5)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    started.wait()
    assert warnings.filters == [("default", None, Warning, None, 0)]
    release.set()
    for thread in threads:
        thread.join(5)
    assert warnings.filters is own
