"""Per-row feature contributions: which explainer fits a model, and what its numbers mean.

Every explanation is additive: for each row, ``base + sum(values) == the explained output``.
The explained output is one number per row:

- a classifier: the predicted class's probability (trees averaging probabilities, the
  sampling explainer on ``predict_proba``) or its raw score (gradient boosting: log-odds;
  linear classifiers: the decision function, log-odds for logistic regression);
- a regressor: the predicted value.

Three explainers, tried in this order:

- ``tree_shap``: exact TreeSHAP (shap's TreeExplainer, ``tree_path_dependent``) for
  scikit-learn's decision trees, random forests, extra trees, gradient boosting and
  histogram gradient boosting (binary classifiers and regressors: shap takes no multiclass
  gradient boosting, which the sampling explainer explains); the base value is the training
  data's mean output, which the trees carry, so no reference data is needed;
- ``linear``: the exact decomposition of a linear model against the mean of the reference
  data, ``coef * (x - mean)``, base ``coef . mean + intercept`` (plain numpy: the web
  computes it for models it predicts itself, ``linear_contributions``);
- ``sampling``: shap's PermutationExplainer over a sample of the reference data, for anything
  else (pipelines, SVMs, neighbours, ...), explained in the input space: the pipeline is one
  function of the columns the request sends. Bounded: at most ``SAMPLING_PERMUTATIONS``
  permutations of the features, over the reference sample the web sends (EXPLAIN_BACKGROUND_ROWS),
  for at most EXPLAIN_SAMPLING_MAX_ROWS rows a request. String columns are explained as
  category codes of the values seen in the sample and the request.

shap is imported only when an explanation is asked for (a runner's first explanation takes
about a second more, and the runner 60-170 MB more memory: README, "Explanations";
bench/explain_bench.py). Importable without Django.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLING_PERMUTATIONS = 10

# Classifiers whose TreeSHAP values explain their raw score (log-odds), not a probability.
_RAW_SCORE_TREES = ("GradientBoostingClassifier", "HistGradientBoostingClassifier")
TREE_CLASSES = (
    "DecisionTreeClassifier",
    "DecisionTreeRegressor",
    "ExtraTreeClassifier",
    "ExtraTreeRegressor",
    "RandomForestClassifier",
    "RandomForestRegressor",
    "ExtraTreesClassifier",
    "ExtraTreesRegressor",
    "GradientBoostingClassifier",
    "GradientBoostingRegressor",
    "HistGradientBoostingClassifier",
    "HistGradientBoostingRegressor",
)


class ExplanationUnavailable(Exception):
    """No explainer applies to this model or request; the message says why (a 422)."""


class TooManyRowsToExplain(Exception):
    """More rows than the sampling explainer takes in one request (a 413)."""


def explain(
    *,
    estimator: Any,
    x: Any,
    predictions: np.ndarray,
    mean: np.ndarray | None,
    background: Any,
    sampling_max_rows: int,
    kept: dict | None = None,
) -> dict:
    """``{"method", "output", "values": (rows, features) float64, "base": (rows,) float64}`` for ``x``.

    ``kept`` is a dict the caller keeps with the loaded model: the TreeExplainer built for it
    is kept there (building one walks every tree: 6-15 ms for 100 trees, measured).
    """
    from sklearn.base import is_classifier, is_regressor

    classifier = is_classifier(estimator)
    if not classifier and not is_regressor(estimator):
        raise ExplanationUnavailable("Explanations cover classifiers and regressors; this model is neither.")
    if np.ndim(predictions) != 1:
        raise ExplanationUnavailable("Explanations cover models with one output; this model predicts several per row.")
    class_index = _class_indices(estimator, predictions) if classifier else None
    if type(estimator).__name__ in TREE_CLASSES and type(estimator).__module__.startswith("sklearn."):
        explained = _tree(estimator, x, class_index, {} if kept is None else kept)
        if explained is not None:
            return explained
    parts = linear_parts(estimator)
    if parts is not None:
        if mean is None:
            raise ExplanationUnavailable(_NEEDS_REFERENCE.format(what="The linear decomposition is taken against the mean of"))
        coef, intercept = parts
        values, base = linear_contributions(coef=coef, intercept=intercept, x=_numeric(x), mean=mean, class_index=class_index)
        output = "decision function of the predicted class" if classifier else "predicted value"
        return {"method": "linear", "output": output, "values": values, "base": base}
    if background is None:
        raise ExplanationUnavailable(_NEEDS_REFERENCE.format(what="The sampling explainer compares each row with"))
    if len(x) > sampling_max_rows:
        raise TooManyRowsToExplain(
            f"The sampling explainer takes at most {sampling_max_rows} rows a request; this one has {len(x)}."
        )
    return _sampling(estimator, x, background, class_index)


_NEEDS_REFERENCE = (
    "{what} the version's reference data, and this version has none: upload the version again with "
    "reference_data (a CSV of training-like rows)."
)


def _class_indices(estimator: Any, predictions: np.ndarray) -> np.ndarray:
    classes = list(np.asarray(estimator.classes_).tolist())
    position = {label: i for i, label in enumerate(classes)}
    return np.array([position[label] for label in np.asarray(predictions).tolist()], dtype=np.intp)


def _pick(values: np.ndarray, base: np.ndarray, class_index: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """One explained output per row: the predicted class's column of a per-class explanation.

    A binary classifier's single score column is the second class's log-odds: the first
    class's is its negation.
    """
    rows = np.arange(values.shape[0])
    if values.ndim == 3:
        if class_index is None:
            raise ExplanationUnavailable("Explanations cover models with one output; this model predicts several per row.")
        return values[rows, :, class_index], np.asarray(base)[rows, class_index]
    base = np.broadcast_to(np.asarray(base, dtype=np.float64).reshape(-1), (values.shape[0],)).copy()
    if class_index is not None:
        sign = np.where(class_index == 0, -1.0, 1.0)
        return values * sign[:, None], base * sign
    return values, base


def _shap():
    """shap without its plots: a runner never draws, and matplotlib wants a writable cache
    directory a runner does not have (and memory for nothing)."""
    import sys

    if "matplotlib" not in sys.modules:
        sys.modules["matplotlib"] = None  # import matplotlib -> ImportError, which shap expects without it
    import shap

    return shap


def _tree(estimator: Any, x: Any, class_index: np.ndarray | None, kept: dict) -> dict | None:
    """TreeSHAP, or None for a tree model shap's TreeExplainer does not take (multiclass
    gradient boosting): the sampling explainer explains those."""
    if "tree" not in kept:
        shap = _shap()
        try:
            kept["tree"] = shap.TreeExplainer(estimator, feature_perturbation="tree_path_dependent")
        except Exception:  # noqa: BLE001 - shap's InvalidModelError (a private name) for the models it refuses
            kept["tree"] = None
    explainer = kept["tree"]
    if explainer is None:
        return None
    result = explainer(x, check_additivity=False)
    values, base = _pick(
        np.asarray(result.values, dtype=np.float64), np.asarray(result.base_values, dtype=np.float64), class_index
    )
    if class_index is None:
        output = "predicted value"
    elif type(estimator).__name__ in _RAW_SCORE_TREES:
        output = "log-odds of the predicted class"
    else:
        output = "probability of the predicted class"
    return {"method": "tree_shap", "output": output, "values": values, "base": base}


def explains_without_reference(estimator_class: str) -> bool:
    """Whether a model of this dotted class name is explained by TreeSHAP, which needs no
    reference data (the Try it page asks before offering an explanation)."""
    module, _, name = estimator_class.rpartition(".")
    return name in TREE_CLASSES and module.startswith("sklearn.")


def linear_parts(estimator: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(coef, intercept)`` of a model whose output is ``x @ coef.T + intercept`` (scikit-learn's
    own predict and decision_function, not overridden), or None."""
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel

    cls = type(estimator)
    coef = getattr(estimator, "coef_", None)
    if type(coef) is not np.ndarray or coef.dtype.kind != "f" or coef.ndim not in (1, 2):
        return None
    if issubclass(cls, LinearClassifierMixin):
        if cls.decision_function is not LinearClassifierMixin.decision_function:
            return None
    elif not (
        issubclass(cls, LinearModel)
        and cls.predict is LinearModel.predict
        and cls._decision_function is LinearModel._decision_function
    ):
        return None
    if coef.ndim == 2 and coef.shape[0] > 1 and not issubclass(cls, LinearClassifierMixin):
        return None  # several outputs
    intercept = np.atleast_1d(np.asarray(getattr(estimator, "intercept_", 0.0), dtype=np.float64))
    return np.asarray(coef, dtype=np.float64), intercept


def linear_contributions(
    *, coef: np.ndarray, intercept: np.ndarray, x: np.ndarray, mean: np.ndarray, class_index: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``coef * (x - mean)`` and ``coef . mean + intercept`` for each row's explained output.

    ``coef`` is (features,) or (outputs, features); a classifier's output is its predicted
    class's score (``class_index``), the negated single score for a binary model's first class.
    """
    coef = np.atleast_2d(coef)
    intercept = np.broadcast_to(np.atleast_1d(intercept), (coef.shape[0],))
    if class_index is None or coef.shape[0] == 1:
        rows = np.zeros(len(x), dtype=np.intp)
    else:
        rows = class_index
    weights = coef[rows]
    values = weights * (x - mean)
    base = weights @ mean + intercept[rows]
    if class_index is not None and coef.shape[0] == 1:
        sign = np.where(class_index == 0, -1.0, 1.0)
        values, base = values * sign[:, None], base * sign
    return values, base


def _numeric(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.astype(np.float64, copy=False)
    return x.to_numpy(dtype=np.float64)


class _Codes:
    """A frame's columns as float64 for shap's maskers: strings (and booleans) as category codes."""

    def __init__(self, frames: list) -> None:
        import pandas as pd

        first = frames[0]
        self.columns = list(first.columns)
        self.dtypes = first.dtypes.to_dict()
        self.categories = {}
        for name in self.columns:
            if first[name].dtype.kind not in "iuf":
                self.categories[name] = pd.unique(pd.concat([frame[name] for frame in frames], ignore_index=True))

    def encode(self, frame) -> np.ndarray:
        import pandas as pd

        out = frame.copy()
        for name, categories in self.categories.items():
            out[name] = pd.Categorical(frame[name], categories=categories).codes
        return out.to_numpy(dtype=np.float64)

    def decode(self, array: np.ndarray):
        import pandas as pd

        frame = pd.DataFrame(array, columns=self.columns)
        for name in self.columns:
            if name in self.categories:
                frame[name] = self.categories[name][array[:, self.columns.index(name)].astype(np.intp)]
            frame[name] = frame[name].astype(self.dtypes[name])
        return frame


def _sampling(estimator: Any, x: Any, background: Any, class_index: np.ndarray | None) -> dict:
    shap = _shap()

    if isinstance(x, np.ndarray):

        def as_input(a: np.ndarray) -> np.ndarray:
            return a

        rows, data = np.asarray(x, dtype=np.float64), np.asarray(background, dtype=np.float64)
    else:
        codes = _Codes([background, x])
        as_input = codes.decode
        rows, data = codes.encode(x), codes.encode(background)
    if class_index is not None and _has(estimator, "predict_proba"):

        def model(a: np.ndarray) -> np.ndarray:
            return estimator.predict_proba(as_input(a))

        output = "probability of the predicted class"
    elif class_index is not None and _has(estimator, "decision_function"):

        def model(a: np.ndarray) -> np.ndarray:
            return estimator.decision_function(as_input(a))

        output = "decision function of the predicted class"
    elif class_index is not None:
        raise ExplanationUnavailable(
            "This classifier has neither predict_proba nor decision_function: there is no score to explain."
        )
    else:

        def model(a: np.ndarray) -> np.ndarray:
            return np.asarray(estimator.predict(as_input(a)), dtype=np.float64)

        output = "predicted value"
    masker = shap.maskers.Independent(data, max_samples=len(data))
    explainer = shap.PermutationExplainer(model, masker, seed=0)
    width = rows.shape[1]
    result = explainer(rows, max_evals=2 * (width + 1) * SAMPLING_PERMUTATIONS, silent=True)
    values, base = _pick(
        np.asarray(result.values, dtype=np.float64), np.asarray(result.base_values, dtype=np.float64), class_index
    )
    return {"method": "sampling", "output": output, "values": values, "base": base}


def _has(estimator: Any, name: str) -> bool:
    try:
        return callable(getattr(estimator, name))
    except AttributeError:  # available_if
        return False
