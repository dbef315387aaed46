"""The platform-owned serving artifact the upload sandbox writes, and what reads it back.

The sandbox loads a tenant's file with the hardened loader, checks and tries it, and then
writes two things (``sandbox_child``):

- ``serving_artifact``: ``pickle.dumps(estimator, protocol=5)`` of the checked model. It is
  still a pickle, read back only by ``load_serving_artifact`` with the same audit,
  restricted unpickler and structure checks as an upload (a runner re-verifies what the
  platform wrote; it never trusts storage). Pickle rather than skops: skops would need its
  own trusted-type list kept in step with the allow-list, and would give no stronger
  guarantee than the same loader that already passed the tenant's file.
- ``linear_spec``: for a plain linear model the linear fast path accepts, its numbers as
  JSON (``linear_spec_for``). ``linear_predictor_from_spec`` evaluates it with numpy alone:
  data, not code, so it may run where no tenant code may.

Importable without Django (runners have none): ``platform_site`` is registered as a bare
package, as ``sandbox_child`` does, when nothing imported it yet.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .sandbox_child import register_bare_platform_site

if "platform_site" not in sys.modules:  # a process without Django: only platform_site.errors is needed
    register_bare_platform_site()

import numpy as np  # noqa: E402

from platform_site.errors import InvalidArtifact  # noqa: E402

LinearPredictor = Callable[[np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]
_KINDS = ("classifier", "regressor")
_PROBA = (None, "expit", "softmax")


def load_serving_artifact(*, data: bytes) -> Any:
    """Load a serving artifact with the hardened loader; return the estimator.

    Raises UnsafeArtifact or InvalidArtifact exactly as for an upload.
    """
    from .safe_pickle import load_pickle
    from .structure import check_model_structures

    loaded = load_pickle(source=data)
    check_model_structures(model=loaded.obj)
    return loaded.obj


def linear_predictor_from_spec(spec: dict[str, Any]) -> LinearPredictor:
    """Return ``predict(x, want_proba=True) -> (predictions, probabilities or None)`` for a validated ``linear_spec``.

    ``x`` must be a 2-D float64 array of ``n_features`` columns (the caller validated it
    against the signature). The arithmetic is scikit-learn's own, in its order, so the
    answers are bitwise scikit-learn's for the model the sandbox checked. Raises
    InvalidArtifact naming what is wrong with a spec that is not float64/int64 numbers of
    consistent shapes.
    """
    kind, coef, intercept, classes, n_features, proba = _validated(spec)
    if kind == "regressor":
        coef_t = coef if coef.ndim == 1 else coef.T

        def predict_value(x: np.ndarray, want_proba: bool = True) -> tuple[np.ndarray, None]:
            _check_input(x, n_features)
            return x @ coef_t + intercept, None

        return predict_value

    coef_t = coef.T

    def predict_class(x: np.ndarray, want_proba: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        _check_input(x, n_features)
        scores = x @ coef_t + intercept
        if scores.shape[1] == 1:
            scores = scores.reshape(-1)
        indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
        predictions = classes.take(indices, axis=0)
        if proba is None or not want_proba:
            return predictions, None
        return predictions, probabilities_from_scores(scores, proba=proba)

    return predict_class


def probabilities_from_scores(scores: np.ndarray, *, proba: str) -> np.ndarray:
    """scikit-learn's predict_proba from a linear decision function, operation for operation.

    ``expit``: ``LinearClassifierMixin._predict_proba_lr`` for one score column (binary);
    ``softmax``: ``sklearn.utils.extmath.softmax`` (subtract the row maximum, exp in place,
    divide by the row sum).
    """
    if proba == "expit":
        from scipy.special import expit  # what scikit-learn's _expit calls for numpy arrays

        positive = expit(scores)
        return np.stack([1 - positive, positive], axis=1)
    shifted = scores - scores.max(axis=1).reshape(-1, 1)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1).reshape(-1, 1)
    return shifted


def linear_spec_for(estimator: Any) -> dict[str, Any] | None:
    """The ``linear_spec`` of ``estimator``, or None when it is not a plain linear model.

    Only for plain linear models (``_is_plain_linear``), with int64 or float64 classes; the
    spec (after a JSON round trip) must give bitwise the estimator's predictions on probe rows,
    and ``proba`` is set only when ``probabilities_from_scores``
    gives bitwise its predict_proba too.
    """
    import json

    if not _is_plain_linear(estimator):
        return None
    from sklearn.base import is_classifier

    coef = np.asarray(estimator.coef_)
    intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
    spec: dict[str, Any] = {
        "kind": "classifier" if is_classifier(estimator) else "regressor",
        "coef": coef.tolist(),
        "intercept": intercept.tolist(),
        "classes": None,
        "n_features": int(estimator.n_features_in_),
        "proba": None,
    }
    if spec["kind"] == "classifier":
        classes = estimator.classes_
        if classes.dtype not in (np.int64, np.float64):
            return None
        spec["classes"] = classes.tolist()
    spec = json.loads(json.dumps(spec))  # what storage will hand back
    probes = probe_rows(spec["n_features"])
    try:
        predictor = linear_predictor_from_spec(spec)
    except InvalidArtifact:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.asarray(estimator.predict(probes))
        predicted, _ = predictor(probes)
        if not _bitwise_equal(predicted, expected):
            return None
        if spec["kind"] == "classifier" and _has_predict_proba(estimator):
            expected_proba = np.asarray(estimator.predict_proba(probes))
            for candidate in ("expit", "softmax"):
                try:
                    _, probabilities = linear_predictor_from_spec({**spec, "proba": candidate})(probes)
                except InvalidArtifact:
                    continue
                if _bitwise_equal(probabilities, expected_proba):
                    spec["proba"] = candidate
                    break
    return spec


def _is_plain_linear(estimator: Any) -> bool:
    """A classifier keeping LinearClassifierMixin's predict and decision_function (LogisticRegression,
    SGDClassifier, LinearSVC, Perceptron, ...), or a regressor keeping LinearModel's predict
    (LinearRegression, ...), with dense float64 coefficients, fitted without feature names.

    Their predict is ``X @ coef_.T + intercept_`` then a threshold or an argmax, which the spec
    reproduces; a subclass that overrides either method keeps its runner.
    """
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel, MultiOutputLinearModel

    cls = type(estimator)
    coef = getattr(estimator, "coef_", None)
    intercept = getattr(estimator, "intercept_", None)
    if type(coef) is not np.ndarray or coef.dtype != np.float64 or coef.ndim not in (1, 2):
        return False
    if not (isinstance(intercept, (float, int)) or (type(intercept) is np.ndarray and intercept.dtype == np.float64)):
        return False
    width = getattr(estimator, "n_features_in_", 0)
    if not isinstance(width, (int, np.integer)) or width <= 0 or getattr(estimator, "feature_names_in_", None) is not None:
        return False
    if cls.predict is LinearClassifierMixin.predict and cls.decision_function is LinearClassifierMixin.decision_function:
        classes = getattr(estimator, "classes_", None)
        return type(classes) is np.ndarray and classes.ndim == 1
    return (
        cls.predict in (LinearModel.predict, MultiOutputLinearModel.predict)
        and cls._decision_function is LinearModel._decision_function
    )


def probe_rows(width: int) -> np.ndarray:
    """Rows at, around and far from the origin: where a different operation order shows."""
    rng = np.random.default_rng(0)
    return np.vstack(
        [np.zeros((1, width)), np.ones((1, width)), rng.normal(size=(64, width)), rng.normal(scale=1e3, size=(16, width))]
    )


def _bitwise_equal(got: np.ndarray, expected: np.ndarray) -> bool:
    return got.dtype == expected.dtype and got.shape == expected.shape and np.array_equal(got, expected)


def _has_predict_proba(estimator: Any) -> bool:
    try:
        return callable(estimator.predict_proba)
    except AttributeError:  # available_if: e.g. SGDClassifier with hinge loss
        return False


def _check_input(x: np.ndarray, n_features: int) -> None:
    if type(x) is not np.ndarray or x.dtype != np.float64 or x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"expected a 2-D float64 array of {n_features} columns")


def _refuse(problem: str) -> InvalidArtifact:
    return InvalidArtifact(f"The linear model spec is not usable: {problem}.")


def _numbers(value: Any, *, field: str, ndim: tuple[int, ...]) -> np.ndarray:
    """``value`` (nested lists) as float64, refusing anything but ints and floats of a listed ndim."""
    try:
        array = np.asarray(value)
    except ValueError:
        raise _refuse(f"{field} is ragged") from None
    if array.dtype.kind not in "if" or array.ndim not in ndim or array.size == 0:
        raise _refuse(f"{field} must be a non-empty {' or '.join(f'{n}-D' for n in ndim)} list of numbers")
    return array.astype(np.float64)


def _validated(spec: Any) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None, int, str | None]:
    if not isinstance(spec, dict):
        raise _refuse("it is not an object")
    kind, proba, n_features = spec.get("kind"), spec.get("proba"), spec.get("n_features")
    if kind not in _KINDS:
        raise _refuse(f"kind must be one of {', '.join(_KINDS)}")
    if type(n_features) is not int or n_features < 1:
        raise _refuse("n_features must be a positive integer")
    coef = _numbers(spec.get("coef"), field="coef", ndim=(2,) if kind == "classifier" else (1, 2))
    intercept = _numbers(spec.get("intercept"), field="intercept", ndim=(1,))
    if coef.shape[-1] != n_features:
        raise _refuse(f"coef has {coef.shape[-1]} columns but n_features is {n_features}")
    rows = 1 if coef.ndim == 1 else coef.shape[0]
    if len(intercept) not in ({rows} if kind == "classifier" else {rows, 1}):
        raise _refuse(f"intercept has {len(intercept)} values for {rows} rows of coef")
    if proba not in _PROBA:
        raise _refuse("proba must be null, expit or softmax")
    if kind == "regressor":
        if spec.get("classes") is not None or proba is not None:
            raise _refuse("a regressor has no classes or probabilities")
        return kind, coef, intercept, None, n_features, None
    classes = _classes(spec.get("classes"))
    expected = 2 if rows == 1 else rows
    if len(classes) != expected:
        raise _refuse(f"{len(classes)} classes for {rows} rows of coef")
    if (proba == "expit" and rows != 1) or (proba == "softmax" and rows < 3):
        raise _refuse(f"proba {proba} does not fit {rows} rows of coef")
    return kind, coef, intercept, classes, n_features, proba


def _classes(value: Any) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise _refuse("classes must be a non-empty list of numbers")
    if all(type(item) is int for item in value):
        return np.array(value, dtype=np.int64)
    if all(type(item) is float for item in value):
        return np.array(value, dtype=np.float64)
    raise _refuse("classes must be all integers or all floats")


__all__ = [
    "linear_predictor_from_spec",
    "linear_spec_for",
    "load_serving_artifact",
    "probabilities_from_scores",
    "probe_rows",
]
