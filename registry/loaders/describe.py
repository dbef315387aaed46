"""Describe a loaded scikit-learn model: what it is, what it predicts, what it expects."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from platform_site.errors import InvalidArtifact


@dataclass(frozen=True)
class ModelDescription:
    """A JSON-safe description of a servable model (see ``describe_estimator``)."""

    estimator_class: str
    final_estimator_class: str
    task: str
    classes: list[Any] | None
    n_features: int | None
    feature_names: list[str] | None
    has_predict_proba: bool
    saved_sklearn_version: str | None
    running_sklearn_version: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_estimator(*, estimator: Any, saved_sklearn_version: str | None = None) -> ModelDescription:
    """Return what ``estimator`` is and serves: a fitted classifier, regressor, outlier detector or clusterer.

    The task comes from the final step of a Pipeline (nested pipelines included).
    ``saved_sklearn_version`` is what the artifact recorded (the loaders report it);
    raises InvalidArtifact for anything else, or one that cannot predict new rows.
    """
    import sklearn
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(estimator, BaseEstimator):
        raise InvalidArtifact(f"The file holds a {_dotted(type(estimator))}, not a scikit-learn estimator.")
    final = _final_step(estimator)
    task = _task_of(final)
    if not hasattr(estimator, "predict"):
        raise InvalidArtifact(_no_predict_reason(final))
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise InvalidArtifact(f"The model is not fitted: {exc}") from exc
    feature_names = getattr(estimator, "feature_names_in_", None)
    n_features = getattr(estimator, "n_features_in_", None)
    return ModelDescription(
        estimator_class=_dotted(type(estimator)),
        final_estimator_class=_dotted(type(final)),
        task=task,
        classes=_json_safe_classes(getattr(final, "classes_", None)) if task == "classification" else None,
        n_features=int(n_features) if n_features is not None else None,
        feature_names=[str(name) for name in feature_names] if feature_names is not None else None,
        has_predict_proba=_has_predict_proba(estimator),
        saved_sklearn_version=saved_sklearn_version,
        running_sklearn_version=sklearn.__version__,
    )


def _task_of(final: Any) -> str:
    from sklearn.base import is_classifier, is_clusterer, is_outlier_detector, is_regressor

    if is_classifier(final):
        return "classification"
    if is_regressor(final):
        return "regression"
    if is_outlier_detector(final):
        return "outlier_detection"
    if is_clusterer(final):
        return "clustering"
    raise InvalidArtifact(
        "Only classifiers, regressors, outlier detectors and clusterers can be served; "
        f"the model's final step is {_dotted(type(final))}."
    )


def _no_predict_reason(final: Any) -> str:
    from sklearn.neighbors import LocalOutlierFactor

    name = _dotted(type(final))
    if isinstance(final, LocalOutlierFactor):
        # novelty=False only scores the rows it was fitted on (fit_predict), by design.
        return (
            f"{name} was fitted with novelty=False, so it has no predict for new rows; "
            "fit it with LocalOutlierFactor(novelty=True) to serve it."
        )
    return f"{name} has no predict for new rows (it only labels the rows it was fitted on), so it cannot be served."


def _final_step(estimator: Any) -> Any:
    from sklearn.pipeline import Pipeline

    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
        if estimator is None or estimator == "passthrough":
            raise InvalidArtifact("The pipeline ends with 'passthrough', so it predicts nothing.")
    return estimator


def _has_predict_proba(estimator: Any) -> bool:
    # available_if-guarded methods (SVC without probability, pipelines) raise AttributeError.
    try:
        return callable(estimator.predict_proba)
    except AttributeError:
        return False


def _json_safe_classes(classes: Any) -> list[Any] | None:
    if classes is None:
        return None
    if isinstance(classes, list):  # multi-output classifiers keep one array per output
        return [_json_safe_classes(part) for part in classes]
    return [_json_safe_scalar(value) for value in classes]


def _json_safe_scalar(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    return str(value)


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
