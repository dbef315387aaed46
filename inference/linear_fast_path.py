"""Predict with a linear model without scikit-learn's second input validation.

A linear model's predict is one matrix product and an argmax; in scikit-learn 1.9 the call
around it costs ~200 µs per request on this project's machine (bench/profile_hotpath.py),
nearly all of it re-validating the input: dataframe and array-API namespace detection,
feature-name checks, the finiteness scan, dtype and shape checks. On the hot path the input
has already been validated against the version's signature (inference.validation): a 2-D
float64 ndarray of the model's width with no NaN or infinity. So for the most deployed family
of models, the platform runs the same arithmetic itself:

    classifiers that keep LinearClassifierMixin's predict and decision_function
    (LogisticRegression, SGDClassifier, LinearSVC, Perceptron, ...):
    scores = X @ coef_.T + intercept_; binary: classes_[scores > 0], else classes_[argmax(scores)]
    regressors that keep LinearModel's predict (LinearRegression, ...): X @ coef_(.T) + intercept_

These are the operations scikit-learn's own methods perform, in the same order on the same
arrays, so the answers are bitwise the same. The fast path is taken only when the estimator's
class uses scikit-learn's own methods unchanged (a subclass that overrides predict or the
decision function keeps scikit-learn's path), its coefficients are dense, and on load it
gives exactly the estimator's own predictions on probe rows; otherwise the model is predicted
by scikit-learn as before. Probabilities are always scikit-learn's own predict_proba.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]


def fast_predict_for(estimator: Any) -> Predict | None:
    """A function computing `estimator.predict(X)` for a validated float64 X, or None."""
    try:
        predict = _build(estimator)
        if predict is None or not _agrees(estimator, predict):
            return None
    except Exception:  # anything unexpected about the estimator: scikit-learn predicts it
        logger.debug("no linear fast path for %s", type(estimator).__name__, exc_info=True)
        return None
    return predict


def _build(estimator: Any) -> Predict | None:
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel, MultiOutputLinearModel

    cls = type(estimator)
    coef = getattr(estimator, "coef_", None)
    intercept = getattr(estimator, "intercept_", None)
    if type(coef) is not np.ndarray or coef.dtype != np.float64 or coef.ndim not in (1, 2):
        return None
    if not (isinstance(intercept, (float, int)) or (type(intercept) is np.ndarray and intercept.dtype == np.float64)):
        return None
    if cls.predict is LinearClassifierMixin.predict and cls.decision_function is LinearClassifierMixin.decision_function:
        classes = getattr(estimator, "classes_", None)
        if type(classes) is not np.ndarray or classes.ndim != 1:
            return None
        coef_t = coef.T if coef.ndim == 2 else coef

        def predict_class(x: np.ndarray) -> np.ndarray:
            scores = x @ coef_t + intercept
            if scores.ndim > 1 and scores.shape[1] == 1:
                scores = scores.reshape(-1)
            indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
            return classes.take(indices, axis=0)

        return predict_class
    if cls.predict in (LinearModel.predict, MultiOutputLinearModel.predict) and cls._decision_function is LinearModel._decision_function:
        coef_t = coef if coef.ndim == 1 else coef.T

        def predict_value(x: np.ndarray) -> np.ndarray:
            return x @ coef_t + intercept

        return predict_value
    return None


def _agrees(estimator: Any, predict: Predict) -> bool:
    """Bitwise the estimator's own predictions on probe rows around and far from the origin."""
    width = int(getattr(estimator, "n_features_in_", 0))
    if width <= 0 or getattr(estimator, "feature_names_in_", None) is not None:
        return False
    import warnings

    rng = np.random.default_rng(0)
    probes = np.vstack([np.zeros((1, width)), np.ones((1, width)), rng.normal(size=(64, width)), rng.normal(scale=1e3, size=(16, width))])
    for rows in (probes, probes[:1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = np.asarray(estimator.predict(rows))
        got = predict(rows)
        if got.dtype != expected.dtype or got.shape != expected.shape or not np.array_equal(got, expected):
            return False
    return True
