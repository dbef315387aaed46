"""The compiled form of a tree ensemble: an ONNX graph ONNX Runtime evaluates, verified exact.

For a one-row request scikit-learn spends most of a forest's predict on Python and joblib
around the trees; ONNX Runtime's ``TreeEnsemble`` walks the same trees in native code. The
upload sandbox (``sandbox_child``) calls ``compile_estimator`` after its other checks; the
runner serves the compiled form only when it was verified (``CompiledPredictor``), else the
scikit-learn estimator.

Why our own conversion and not skl2onnx's: skl2onnx stores class weights as float32 and
divides each tree's weight before summing, so probabilities differ from scikit-learn's by
about 5e-8 and an exact tie between classes (50 trees against 50) can break the other way:
a different label. Here the graph computes exactly what scikit-learn computes:

- ``TreeEnsemble`` (ai.onnx.ml opset 5) in double: thresholds and leaf values are
  scikit-learn's own float64 numbers, the leaf values summed per target in tree order from
  zero, as scikit-learn accumulates them (a boosted model's starting value is a first
  one-leaf tree, so it is added first, as scikit-learn does);
- scikit-learn's trees compare the input cast to float32 with float64 thresholds: the
  graph casts to float32 and back before the trees (HistGradientBoosting compares in float64,
  and gets no cast);
- what follows the sum (a forest's division by its number of trees, a boosted classifier's
  expit or softmax, the argmax and the mapping to ``classes_``) is done by numpy and scipy
  in the runner (``CompiledPredictor``), operation for operation as scikit-learn does it;
- pipeline steps before the trees are converted only where ONNX computes them exactly
  (StandardScaler: a subtraction and a division; MinMaxScaler: a multiplication and an
  addition, both elementwise in double), and SimpleImputer (NaN, every statistic finite) is
  the identity on the finite rows the compiled form takes.

The compiled form takes only rows whose values are finite (as float32 for scikit-learn's
trees, and after the pipeline's steps); any other row goes to scikit-learn, which handles
missing values and raises its own errors. Supported: DecisionTree, RandomForest and
ExtraTrees (classifier and regressor, one output), GradientBoosting (log-loss classifier;
any regressor loss), HistGradientBoosting without categorical features (log-loss
classifier; regressors with an identity or log link), alone or as a pipeline's last step.

``verify_compiled`` then checks that the artifact's bytes are exactly the estimator's
conversion (every threshold and leaf value, bitwise) and compares the compiled form with
scikit-learn on the model's example rows, rows made to sit exactly at every split threshold and one representable step either
side (in float64 and in float32), and random rows: labels must be identical and
probabilities and regression values bitwise equal (tolerance 0). Anything else leaves the
version on scikit-learn, with the reason.

HistGradientBoosting keeps its trees and starting value only in private attributes
(``_predictors``, ``_baseline_prediction``); there is no public way to read them. They are
read in one place (``_hist_gradient_boosting_plan``); if a scikit-learn upgrade changes them,
the conversion fails or its verification does, and the model is served by scikit-learn.

Importable without Django, like ``serving``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from .sandbox_child import register_bare_platform_site

if "platform_site" not in sys.modules:  # a process without Django: only platform_site.errors is needed
    register_bare_platform_site()

import numpy as np  # noqa: E402

RUNTIME_ONNX = "onnx"
RUNTIME_SKLEARN = "sklearn"
# Probabilities and regression values must be bitwise scikit-learn's; labels identical.
TOLERANCE = 0.0
METADATA_KEY = "modelhost.post"
_ONNX_OPSET = 17
_ONNX_ML_OPSET = 5
# Threshold rows times tree copies the verification may run (about a second of ONNX Runtime);
# past it, an even sample of split nodes, never fewer than _MIN_THRESHOLD_ROWS rows.
_TREE_ROW_BUDGET = 2_000_000
_MIN_THRESHOLD_ROWS = 2_000
_VALUES_PER_SPLIT = 5
_RANDOM_ROWS = 256


class NotCompilable(Exception):
    """The model has no exact compiled form; the message says why (shown to its owner)."""


@dataclass
class _Tree:
    """One tree in scikit-learn's arrays: ``weights`` is (n_nodes, n_targets) leaf values."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    weights: np.ndarray
    targets: tuple[int, ...]  # which targets this tree adds to (columns of weights)


@dataclass
class _Plan:
    n_features: int
    n_targets: int
    float32_input: bool
    trees: list[_Tree]
    post: dict[str, Any]
    steps: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)


@dataclass(frozen=True)
class Compiled:
    """What the sandbox stores: the ONNX bytes, or None and why."""

    artifact: bytes | None
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


# --- from scikit-learn to a plan ------------------------------------------------------------


def plan_for(estimator: Any) -> _Plan:
    """The trees, steps and post-processing that reproduce `estimator`; NotCompilable when it has none."""
    from sklearn.pipeline import Pipeline

    steps: list[tuple[str, np.ndarray, np.ndarray]] = []
    final = estimator
    if isinstance(estimator, Pipeline):
        for name, step in estimator.steps[:-1]:
            if step is None or step == "passthrough":
                continue
            steps.extend(_step_ops(name, step))
        final = estimator.steps[-1][1]
    plan = _final_plan(final)
    plan.steps = steps
    if steps:
        plan.n_features = len(steps[0][1])
    return plan


def _step_ops(name: str, step: Any) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    kind = type(step)
    if kind is StandardScaler:
        width = int(step.n_features_in_)
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None
        ops = []
        if mean is not None:
            ops.append(("sub", _float64(mean, width, name), np.zeros(0)))
        if scale is not None:
            ops.append(("div", _float64(scale, width, name), np.zeros(0)))
        return ops or [("identity", np.zeros(width), np.zeros(0))]
    if kind is MinMaxScaler:
        if step.clip:
            raise NotCompilable(f"pipeline step {name!r}: MinMaxScaler(clip=True) has no exact compiled form")
        width = int(step.n_features_in_)
        return [("mul", _float64(step.scale_, width, name), np.zeros(0)), ("add", _float64(step.min_, width, name), np.zeros(0))]
    if kind is SimpleImputer:
        missing = step.missing_values
        statistics = np.asarray(step.statistics_)
        if not (isinstance(missing, float) and missing != missing):
            raise NotCompilable(f"pipeline step {name!r}: SimpleImputer replaces {missing!r}, not NaN")
        if step.add_indicator or statistics.dtype.kind != "f" or not np.isfinite(statistics).all():
            raise NotCompilable(f"pipeline step {name!r}: SimpleImputer adds or drops columns")
        return [("identity", np.zeros(int(step.n_features_in_)), np.zeros(0))]
    raise NotCompilable(f"pipeline step {name!r} ({kind.__name__}) has no exact compiled form")


def _float64(values: Any, width: int, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype != np.float64 or array.shape != (width,):
        raise NotCompilable(f"pipeline step {name!r} does not hold {width} float64 numbers")
    return array


def _final_plan(estimator: Any) -> _Plan:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier, ExtraTreeRegressor

    kind = type(estimator)
    if kind in (DecisionTreeClassifier, ExtraTreeClassifier):
        _single_output(estimator)
        n_classes = len(estimator.classes_)
        return _Plan(
            n_features=int(estimator.n_features_in_),
            n_targets=n_classes,
            float32_input=True,
            trees=[_sklearn_tree(estimator.tree_, _class_values(estimator.tree_, n_classes), tuple(range(n_classes)))],
            post={"kind": "tree_classifier"},
        )
    if kind in (DecisionTreeRegressor, ExtraTreeRegressor):
        _single_output(estimator)
        return _Plan(
            n_features=int(estimator.n_features_in_),
            n_targets=1,
            float32_input=True,
            trees=[_sklearn_tree(estimator.tree_, _regression_values(estimator.tree_), (0,))],
            post={"kind": "tree_regressor"},
        )
    if kind in (RandomForestClassifier, ExtraTreesClassifier):
        _single_output(estimator)
        n_classes = len(estimator.classes_)
        trees = []
        for tree in estimator.estimators_:
            if len(tree.classes_) != n_classes:
                raise NotCompilable("a tree of the forest knows a different number of classes")
            trees.append(_sklearn_tree(tree.tree_, _class_values(tree.tree_, n_classes), tuple(range(n_classes))))
        return _Plan(int(estimator.n_features_in_), n_classes, True, trees, {"kind": "forest_classifier", "n_trees": len(trees)})
    if kind in (RandomForestRegressor, ExtraTreesRegressor):
        _single_output(estimator)
        trees = [_sklearn_tree(tree.tree_, _regression_values(tree.tree_), (0,)) for tree in estimator.estimators_]
        return _Plan(int(estimator.n_features_in_), 1, True, trees, {"kind": "forest_regressor", "n_trees": len(trees)})
    if kind in (GradientBoostingClassifier, GradientBoostingRegressor):
        return _gradient_boosting_plan(estimator, is_classifier=kind is GradientBoostingClassifier)
    if kind in (HistGradientBoostingClassifier, HistGradientBoostingRegressor):
        return _hist_gradient_boosting_plan(estimator, is_classifier=kind is HistGradientBoostingClassifier)
    raise NotCompilable(f"{kind.__name__} is not a tree ensemble the platform compiles")


def _single_output(estimator: Any) -> None:
    if getattr(estimator, "n_outputs_", 1) != 1:
        raise NotCompilable(f"{type(estimator).__name__} with {estimator.n_outputs_} outputs is not compiled")


def _class_values(tree: Any, n_classes: int) -> np.ndarray:
    """What scikit-learn's tree predict_proba returns at each node (``value`` holds fractions)."""
    value = np.asarray(tree.value)
    if value.ndim != 3 or value.shape[1] != 1 or value.shape[2] < n_classes:
        raise NotCompilable("a tree's values do not have one output")
    return np.ascontiguousarray(value[:, 0, :n_classes], dtype=np.float64)


def _regression_values(tree: Any) -> np.ndarray:
    value = np.asarray(tree.value)
    if value.ndim != 3 or value.shape[1] != 1 or value.shape[2] != 1:
        raise NotCompilable("a tree's values do not have one output")
    return np.ascontiguousarray(value[:, 0, :], dtype=np.float64)


def _sklearn_tree(tree: Any, weights: np.ndarray, targets: tuple[int, ...]) -> _Tree:
    return _Tree(
        left=np.asarray(tree.children_left, dtype=np.int64),
        right=np.asarray(tree.children_right, dtype=np.int64),
        feature=np.asarray(tree.feature, dtype=np.int64),
        threshold=np.asarray(tree.threshold, dtype=np.float64),
        weights=weights,
        targets=targets,
    )


def _constant_tree(values: np.ndarray) -> _Tree:
    """A one-leaf tree adding `values` (one per target): a boosted model's starting value."""
    return _Tree(
        left=np.array([-1]),
        right=np.array([-1]),
        feature=np.array([-2]),
        threshold=np.array([-2.0]),
        weights=np.asarray(values, dtype=np.float64).reshape(1, -1),
        targets=tuple(range(len(values))),
    )


def _gradient_boosting_plan(estimator: Any, *, is_classifier: bool) -> _Plan:
    from scipy.special import logit
    from sklearn.dummy import DummyClassifier, DummyRegressor

    n_features = int(estimator.n_features_in_)
    stages = estimator.estimators_
    k_trees = stages.shape[1]
    if is_classifier:
        if estimator.loss != "log_loss":
            raise NotCompilable(f"GradientBoostingClassifier(loss={estimator.loss!r}) is not compiled")
        post = {"kind": "binary_logit", "positive": ">="} if k_trees == 1 else {"kind": "softmax"}
    else:
        post = {"kind": "raw"}
    init = estimator.init_
    probe = np.zeros((1, n_features))
    if isinstance(init, str) and init == "zero":
        start = np.zeros(k_trees)
    elif is_classifier and type(init) is DummyClassifier:
        # _init_raw_predictions: the prior, clipped to [eps, 1 - eps], through the loss's link.
        predictions = init.predict_proba(probe)
        if k_trees == 1:
            predictions = predictions[:, 1]
        eps = np.finfo(np.float64).eps
        predictions = np.clip(predictions, eps, 1 - eps, dtype=np.float64)
        if k_trees == 1:
            start = logit(predictions).reshape(-1)
        else:  # MultinomialLogit.link: the log of each over their geometric mean
            from scipy.stats import gmean

            start = np.log(predictions / gmean(predictions, axis=1)[:, None]).reshape(-1)
    elif not is_classifier and type(init) is DummyRegressor:
        start = init.predict(probe).astype(np.float64).reshape(-1)
    else:
        raise NotCompilable(f"a gradient boosting model started from {type(init).__name__} is not compiled")
    if start.shape != (k_trees,):
        raise NotCompilable("the starting value does not match the number of trees per stage")
    trees = [_constant_tree(start)]
    scale = float(estimator.learning_rate)
    for stage in stages:
        for k, tree in enumerate(stage):
            # predict_stages adds scale * value: the same product, computed once here.
            values = scale * _regression_values(tree.tree_)
            trees.append(_sklearn_tree(tree.tree_, values, (k,)))
    return _Plan(n_features, k_trees, True, trees, post)


def _hist_gradient_boosting_plan(estimator: Any, *, is_classifier: bool) -> _Plan:
    """HistGradientBoosting's trees; see the module docstring on its private attributes."""
    categorical = getattr(estimator, "is_categorical_", None)
    if categorical is not None and np.any(categorical):
        raise NotCompilable("HistGradientBoosting with categorical features is not compiled")
    predictors = getattr(estimator, "_predictors", None)
    baseline = getattr(estimator, "_baseline_prediction", None)
    if not isinstance(predictors, list) or baseline is None:
        raise NotCompilable("this HistGradientBoosting keeps its trees where the platform cannot read them")
    baseline = np.asarray(baseline, dtype=np.float64).reshape(-1)
    k_trees = int(estimator.n_trees_per_iteration_)
    loss = estimator.loss
    if is_classifier:
        if loss != "log_loss":
            raise NotCompilable(f"HistGradientBoostingClassifier(loss={loss!r}) is not compiled")
        post = {"kind": "binary_logit", "positive": ">"} if k_trees == 1 else {"kind": "softmax"}
    elif loss in ("squared_error", "absolute_error", "quantile"):
        post = {"kind": "raw"}
    elif loss in ("poisson", "gamma"):
        post = {"kind": "exp"}
    else:
        raise NotCompilable(f"HistGradientBoostingRegressor(loss={loss!r}) is not compiled")
    if baseline.shape != (k_trees,):
        raise NotCompilable("the starting value does not match the number of trees per iteration")
    trees = [_constant_tree(baseline)]
    for iteration in predictors:
        if len(iteration) != k_trees:
            raise NotCompilable("an iteration does not have one tree per target")
        for k, predictor in enumerate(iteration):
            nodes = predictor.nodes
            is_leaf = nodes["is_leaf"].astype(bool)
            if np.any(nodes["is_categorical"][~is_leaf]):
                raise NotCompilable("HistGradientBoosting with categorical splits is not compiled")
            trees.append(
                _Tree(
                    left=np.where(is_leaf, -1, nodes["left"].astype(np.int64)),
                    right=np.where(is_leaf, -1, nodes["right"].astype(np.int64)),
                    feature=nodes["feature_idx"].astype(np.int64),
                    threshold=nodes["num_threshold"].astype(np.float64),
                    weights=nodes["value"].astype(np.float64).reshape(-1, 1),
                    targets=(k,),
                )
            )
    return _Plan(int(estimator.n_features_in_), k_trees, False, trees, post)


# --- from a plan to ONNX ------------------------------------------------------------------------


def onnx_bytes(plan: _Plan) -> bytes:
    """The ONNX model of `plan`: input ``x`` (double, n_features columns); outputs ``raw``
    (double, n_targets columns) and, after pipeline steps, ``features`` (what the trees read)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    initializers: list[Any] = []
    current = "x"
    for index, (op, values, _unused) in enumerate(plan.steps):
        if op == "identity":
            continue
        name = f"step{index}"
        initializers.append(numpy_helper.from_array(values.reshape(1, -1), name=f"{name}_values"))
        onnx_op = {"sub": "Sub", "div": "Div", "mul": "Mul", "add": "Add"}[op]
        nodes.append(helper.make_node(onnx_op, [current, f"{name}_values"], [f"{name}_out"]))
        current = f"{name}_out"
    if plan.float32_input:
        nodes.append(helper.make_node("Cast", [current], ["as_float32"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Cast", ["as_float32"], ["features"], to=TensorProto.DOUBLE))
    else:
        nodes.append(helper.make_node("Identity", [current], ["features"]))
    nodes.append(helper.make_node("TreeEnsemble", ["features"], ["raw"], domain="ai.onnx.ml", **_tree_ensemble_attributes(plan)))
    outputs = [helper.make_tensor_value_info("raw", TensorProto.DOUBLE, [None, plan.n_targets])]
    if plan.steps:
        outputs.append(helper.make_tensor_value_info("features", TensorProto.DOUBLE, [None, plan.n_features]))
    graph = helper.make_graph(
        nodes,
        "modelhost_compiled",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, plan.n_features])],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _ONNX_OPSET), helper.make_opsetid("ai.onnx.ml", _ONNX_ML_OPSET)],
        producer_name="modelhost",
    )
    model.ir_version = 8
    helper.set_model_props(
        model, {METADATA_KEY: json.dumps({**plan.post, "n_features": plan.n_features, "n_targets": plan.n_targets})}
    )
    return model.SerializeToString()


def _tree_ensemble_attributes(plan: _Plan) -> dict[str, Any]:
    """ai.onnx.ml TreeEnsemble's attributes: one copy of a tree per target it adds to (a leaf of
    opset 5 carries one target), copies interleaved so that each target sums trees in order."""
    from onnx import numpy_helper

    roots: list[int] = []
    features: list[int] = []
    splits: list[float] = []
    true_ids: list[int] = []
    true_leaf: list[int] = []
    false_ids: list[int] = []
    false_leaf: list[int] = []
    leaf_targets: list[int] = []
    leaf_weights: list[float] = []
    for tree in plan.trees:
        is_split = tree.left != -1
        for column, target in enumerate(tree.targets):
            split_base = len(features)
            leaf_base = len(leaf_weights)
            split_index = np.cumsum(is_split) - 1  # node id -> position among splits
            leaf_index = np.cumsum(~is_split) - 1  # node id -> position among leaves
            if not is_split[0]:  # the whole tree is one leaf: both branches of one node reach it
                roots.append(split_base)
                features.append(0)
                splits.append(0.0)
                true_ids.append(leaf_base)
                false_ids.append(leaf_base)
                true_leaf.append(1)
                false_leaf.append(1)
                leaf_targets.append(target)
                leaf_weights.append(float(tree.weights[0, column]))
                continue
            roots.append(split_base + int(split_index[0]))
            splits_here = np.flatnonzero(is_split)
            left, right = tree.left[splits_here], tree.right[splits_here]
            features.extend(tree.feature[splits_here].tolist())
            splits.extend(tree.threshold[splits_here].tolist())
            for children, ids, leaf_flags in ((left, true_ids, true_leaf), (right, false_ids, false_leaf)):
                child_is_split = is_split[children]
                ids.extend(
                    np.where(child_is_split, split_base + split_index[children], leaf_base + leaf_index[children]).tolist()
                )
                leaf_flags.extend((~child_is_split).astype(int).tolist())
            leaves = np.flatnonzero(~is_split)
            leaf_targets.extend([target] * len(leaves))
            leaf_weights.extend(tree.weights[leaves, column].tolist())
    count = len(features)
    return {
        "n_targets": plan.n_targets,
        "aggregate_function": 1,  # SUM
        "post_transform": 0,  # NONE
        "tree_roots": roots,
        "nodes_featureids": features,
        "nodes_splits": numpy_helper.from_array(np.array(splits, dtype=np.float64)),
        "nodes_modes": numpy_helper.from_array(np.zeros(count, dtype=np.uint8)),  # BRANCH_LEQ: x <= threshold goes left
        "nodes_truenodeids": true_ids,
        "nodes_trueleafs": true_leaf,
        "nodes_falsenodeids": false_ids,
        "nodes_falseleafs": false_leaf,
        "leaf_targetids": leaf_targets,
        "leaf_weights": numpy_helper.from_array(np.array(leaf_weights, dtype=np.float64)),
    }


# --- serving ------------------------------------------------------------------------------------


def session_options() -> Any:
    """One thread, no spinning, no arena: a runner is one single-threaded process under RLIMIT_AS."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def warm_runtime() -> None:
    """Import onnx and ONNX Runtime and open and run one small graph, so that what they load on
    first use is in memory before the runner host forks (a runner, as its own user, may not
    be able to read the libraries' files)."""
    from sklearn.tree import DecisionTreeClassifier

    tree = DecisionTreeClassifier(max_depth=1).fit(np.array([[0.0], [1.0]]), np.array([0, 1]))
    predictor = CompiledPredictor(data=onnx_bytes(plan_for(tree)), estimator=tree)
    predictor.predict(np.array([[0.5]]), want_proba=True)


class CompiledPredictor:
    """predict (and predict_proba) of a verified compiled artifact, next to its estimator.

    ``predict(x, want_proba)`` returns ``(predictions, probabilities or None)``, or None when
    the rows are not ones the compiled form takes (not all finite, not plain numbers in the
    fitted column order): the caller then asks scikit-learn.
    """

    def __init__(self, *, data: bytes, estimator: Any) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(data, session_options(), providers=["CPUExecutionProvider"])
        post = json.loads(self.session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        self.kind = post["kind"]
        self.n_trees = post.get("n_trees")
        self.positive = post.get("positive")
        self.n_features = int(post["n_features"])
        self.has_steps = len(self.session.get_outputs()) > 1
        self.classes = getattr(estimator, "classes_", None)
        self.feature_names = getattr(estimator, "feature_names_in_", None)
        self.outputs = [output.name for output in self.session.get_outputs()]

    def rows(self, x: Any) -> np.ndarray | None:
        """`x` as the float64 array the graph takes, or None when it is not one it may take."""
        if type(x) is np.ndarray:
            if self.feature_names is not None or x.ndim != 2 or x.dtype.kind not in "fiub":
                return None
            array = x.astype(np.float64, copy=False)
        else:
            columns = getattr(x, "columns", None)
            if columns is None or self.feature_names is None or list(columns) != list(self.feature_names):
                return None
            if any(dtype.kind not in "fiub" for dtype in x.dtypes):
                return None
            array = x.to_numpy(dtype=np.float64)
        if array.shape[1] != self.n_features or array.shape[0] == 0:
            return None
        with np.errstate(over="ignore"):
            if not np.isfinite(array.astype(np.float32)).all():
                return None
        return np.ascontiguousarray(array)

    def predict(self, x: Any, *, want_proba: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
        array = self.rows(x)
        if array is None:
            return None
        found = self.session.run(self.outputs, {"x": array})
        if self.has_steps:
            with np.errstate(over="ignore"):
                if not np.isfinite(found[1].astype(np.float32)).all():
                    return None
        return self.finish(found[0], want_proba=want_proba)

    def finish(self, raw: np.ndarray, *, want_proba: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """scikit-learn's last steps on the summed trees, in its order of operations."""
        from .serving import probabilities_from_scores

        kind = self.kind
        if kind == "tree_classifier":
            return self.classes.take(np.argmax(raw, axis=1), axis=0), (raw if want_proba else None)
        if kind == "forest_classifier":
            raw /= self.n_trees
            return self.classes.take(np.argmax(raw, axis=1), axis=0), (raw if want_proba else None)
        if kind == "tree_regressor":
            return raw[:, 0], None
        if kind == "forest_regressor":
            values = raw[:, 0].copy()
            values /= self.n_trees
            return values, None
        if kind == "raw":
            return raw.ravel(), None
        if kind == "exp":
            return np.exp(raw.ravel()), None
        if kind == "binary_logit":
            scores = raw.ravel()
            positive = scores >= 0 if self.positive == ">=" else scores > 0
            predictions = self.classes[positive.astype(int)]
            return predictions, (probabilities_from_scores(scores, proba="expit") if want_proba else None)
        if kind == "softmax":
            predictions = self.classes[np.argmax(raw, axis=1)]
            return predictions, (probabilities_from_scores(raw, proba="softmax") if want_proba else None)
        raise ValueError(f"unknown compiled kind {kind!r}")


# --- verification -------------------------------------------------------------------------------


def verification_rows(*, plan: _Plan, examples: np.ndarray | None) -> np.ndarray:
    """Rows to compare on: the model's examples, random rows around them, and for each split
    node a row following the path to it with the split feature exactly at the threshold, one
    float64 step either side, and the float32 values either side of it.

    Every row goes through every tree, so each row tests many nodes; the threshold rows are an
    even sample of split nodes when a model has more than ``_TREE_ROW_BUDGET`` (rows times
    trees) of them, which keeps the check near a second for a 500-tree forest. For a pipeline
    the threshold rows are mapped back through its steps as well as numpy can: still near the
    thresholds, which is what matters."""
    rng = np.random.default_rng(0)
    width = plan.n_features
    has_examples = examples is not None and len(examples) > 0
    base = np.asarray(examples[0], dtype=np.float64) if has_examples else np.zeros(width)
    parts = []
    if has_examples:
        parts.append(np.asarray(examples, dtype=np.float64))
        spread = np.std(examples, axis=0) + 1.0
        parts.append(examples[rng.integers(0, len(examples), _RANDOM_ROWS)] + rng.normal(size=(_RANDOM_ROWS, width)) * spread)
    parts.append(rng.normal(size=(_RANDOM_ROWS, width)) * (np.abs(base) + 1.0) + base)
    tree_base = _through_steps(plan, base[np.newaxis, :])[0]
    copies = sum(len(tree.targets) for tree in plan.trees)
    max_rows = max(_MIN_THRESHOLD_ROWS, _TREE_ROW_BUDGET // max(1, copies))
    split_count = sum(int(np.count_nonzero(tree.left != -1)) for tree in plan.trees)
    keep_every = max(1, -(-split_count * _VALUES_PER_SPLIT // max_rows))
    offset = 0
    blocks = []
    for tree in plan.trees:
        splits = np.flatnonzero(tree.left != -1)
        if not len(splits):
            continue
        sampled = splits[(np.arange(offset, offset + len(splits)) % keep_every) == 0]
        offset += len(splits)
        if len(sampled):
            reaching = _rows_reaching(tree, tree_base)
            block = np.repeat(reaching[sampled], _VALUES_PER_SPLIT, axis=0)
            values = _around(tree.threshold[sampled])
            block[np.arange(len(block)), np.repeat(tree.feature[sampled], _VALUES_PER_SPLIT)] = values.reshape(-1)
            blocks.append(block)
    if blocks:
        parts.append(_through_steps_inverse(plan, np.vstack(blocks)))
    rows = np.vstack(parts)
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(rows.astype(np.float32)).all(axis=1)
    return np.ascontiguousarray(rows[finite])


def _rows_reaching(tree: _Tree, base: np.ndarray) -> np.ndarray:
    """For each node, `base` changed so that it follows the path to that node (parents come
    before their children in both scikit-learn's node arrays)."""
    n_nodes = len(tree.left)
    rows = np.empty((n_nodes, len(base)))
    low = np.full((n_nodes, len(base)), -np.inf)
    high = np.full((n_nodes, len(base)), np.inf)
    rows[0] = base
    for node in np.flatnonzero(tree.left != -1):
        feature, threshold = tree.feature[node], tree.threshold[node]
        for child, lo, hi in (
            (tree.left[node], low[node, feature], min(high[node, feature], threshold)),
            (tree.right[node], max(low[node, feature], threshold), high[node, feature]),
        ):
            rows[child] = rows[node]
            low[child] = low[node]
            high[child] = high[node]
            low[child, feature], high[child, feature] = lo, hi
            rows[child, feature] = _inside(lo, hi, rows[node, feature])
    return rows


def _around(thresholds: np.ndarray) -> np.ndarray:
    """(n, _VALUES_PER_SPLIT): each threshold, one float64 step below and above, and the
    float32 values just below and above it (what scikit-learn's trees compare)."""
    as32 = thresholds.astype(np.float32)
    below32 = np.where(as32.astype(np.float64) <= thresholds, as32, np.nextafter(as32, np.float32(-np.inf)))
    above32 = np.where(as32.astype(np.float64) > thresholds, as32, np.nextafter(as32, np.float32(np.inf)))
    return np.stack(
        [
            thresholds,
            np.nextafter(thresholds, -np.inf),
            np.nextafter(thresholds, np.inf),
            below32.astype(np.float64),
            above32.astype(np.float64),
        ],
        axis=1,
    )


def _inside(lo: float, hi: float, current: float) -> float:
    """A value in (lo, hi]: the current one if it is, else one between the bounds."""
    if lo < current <= hi:
        return current
    if np.isfinite(lo) and np.isfinite(hi):
        return hi if lo >= hi else lo + (hi - lo) / 2
    if np.isfinite(hi):
        return hi - abs(hi) - 1.0
    return lo + abs(lo) + 1.0


def _through_steps(plan: _Plan, rows: np.ndarray) -> np.ndarray:
    """Rows through the pipeline's steps, as the graph computes them."""
    for op, values, _unused in plan.steps:
        if op == "sub":
            rows = rows - values
        elif op == "div":
            rows = rows / values
        elif op == "mul":
            rows = rows * values
        elif op == "add":
            rows = rows + values
    return rows


def _through_steps_inverse(plan: _Plan, rows: np.ndarray) -> np.ndarray:
    """Map rows in the trees' input space back to the pipeline's input (the steps undone in reverse)."""
    for op, values, _unused in reversed(plan.steps):
        if op == "sub":
            rows = rows + values
        elif op == "div":
            rows = rows * values
        elif op == "mul":
            with np.errstate(divide="ignore", invalid="ignore"):
                rows = np.where(values != 0, rows / np.where(values != 0, values, 1.0), rows)
        elif op == "add":
            rows = rows - values
    return rows


def compare(*, estimator: Any, predictor: CompiledPredictor, rows: np.ndarray) -> dict[str, Any]:
    """The exactness figures of the compiled form against scikit-learn on `rows`.

    ``rows_compared``, ``label_disagreements``, ``max_abs_diff``, ``max_rel_diff`` (over
    probabilities or regression values), ``dtype_or_shape_differs``; ``skipped`` counts rows
    the compiled form would hand to scikit-learn (after a pipeline's steps, not finite)."""
    import warnings

    from sklearn.base import is_classifier

    x = rows
    if predictor.feature_names is not None:
        import pandas as pd

        x = pd.DataFrame(rows, columns=list(predictor.feature_names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.asarray(estimator.predict(x))
        want_proba = is_classifier(estimator) and hasattr(estimator, "predict_proba")
        expected_proba = np.asarray(estimator.predict_proba(x)) if want_proba else None
    answer = predictor.predict(x, want_proba=want_proba)
    figures: dict[str, Any] = {"rows_compared": int(len(rows)), "skipped": 0}
    if answer is None:  # some row is not finite after the steps: compare row by row on the rest
        keep = [
            i
            for i in range(len(rows))
            if predictor.predict(x[i : i + 1] if not hasattr(x, "iloc") else x.iloc[i : i + 1], want_proba=False) is not None
        ]
        figures["skipped"] = len(rows) - len(keep)
        if not keep:
            figures.update(label_disagreements=0, max_abs_diff=0.0, max_rel_diff=0.0, dtype_or_shape_differs=False)
            return figures
        sub = x.iloc[keep] if hasattr(x, "iloc") else x[keep]
        expected = expected[keep]
        expected_proba = expected_proba[keep] if expected_proba is not None else None
        answer = predictor.predict(sub, want_proba=want_proba)
        figures["rows_compared"] = len(keep)
    predictions, probabilities = answer
    differs = predictions.dtype != expected.dtype or predictions.shape != expected.shape
    if expected_proba is not None:
        differs = (
            differs
            or probabilities is None
            or probabilities.dtype != expected_proba.dtype
            or probabilities.shape != expected_proba.shape
        )
    figures["dtype_or_shape_differs"] = bool(differs)
    if differs:
        figures.update(label_disagreements=int(len(rows)), max_abs_diff=float("inf"), max_rel_diff=float("inf"))
        return figures
    if expected_proba is not None:
        got, want = probabilities, expected_proba
        figures["label_disagreements"] = int(np.count_nonzero(predictions != expected))
    elif is_classifier(estimator):
        got = want = np.zeros(1)
        figures["label_disagreements"] = int(np.count_nonzero(predictions != expected))
    else:
        got, want = predictions.astype(np.float64), expected.astype(np.float64)
        figures["label_disagreements"] = 0
    diff = np.abs(got - want)
    figures["max_abs_diff"] = float(diff.max(initial=0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(want != 0, diff / np.abs(want), np.where(diff == 0, 0.0, np.inf))
    figures["max_rel_diff"] = float(relative.max(initial=0.0))
    return figures


def verify_compiled(*, estimator: Any, data: bytes, examples: np.ndarray | None) -> dict[str, Any]:
    """Compare `data` (a compiled artifact) with `estimator`; the figures and ``passed``."""
    plan = plan_for(estimator)
    predictor = CompiledPredictor(data=data, estimator=estimator)
    rows = verification_rows(plan=plan, examples=examples)
    figures = compare(estimator=estimator, predictor=predictor, rows=rows)
    # Rows reach most leaves, not all: the bytes must also be exactly the estimator's conversion,
    # so that no threshold or leaf value differs anywhere (a deterministic encoding).
    figures["matches_estimator"] = data == onnx_bytes(plan)
    figures["tolerance"] = TOLERANCE
    figures["passed"] = (
        figures["matches_estimator"]
        and not figures["dtype_or_shape_differs"]
        and figures["label_disagreements"] == 0
        and figures["max_abs_diff"] <= TOLERANCE
        and figures["rows_compared"] > 0
    )
    return figures


def failure_reason(figures: dict[str, Any]) -> str:
    if not figures.get("matches_estimator", True):
        return "verification failed: the compiled bytes are not the conversion of the estimator's trees"
    if figures.get("dtype_or_shape_differs"):
        return "verification failed: the compiled form's answers have another type or shape than scikit-learn's"
    return (
        f"verification failed on {figures['rows_compared']} rows: {figures['label_disagreements']} labels differ, "
        f"largest difference {figures['max_abs_diff']:.3g} (tolerance {TOLERANCE:g})"
    )


def compile_estimator(estimator: Any, *, examples: Any = None) -> Compiled:
    """The verified compiled artifact of `estimator`, or None and the reason it is served by scikit-learn.

    `examples`: the model's own rows (input example, reference data) as a 2-D array or a
    DataFrame of its columns, or None.
    """
    try:
        plan = plan_for(estimator)
    except NotCompilable as exc:
        return Compiled(None, str(exc))
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        return Compiled(None, f"the model could not be converted ({type(exc).__name__}: {exc})")
    data = onnx_bytes(plan)
    try:
        figures = verify_compiled(estimator=estimator, data=data, examples=_example_array(examples, plan.n_features))
    except MemoryError:
        raise
    except Exception as exc:  # the runtime refused the graph or failed on a row: not served compiled
        return Compiled(None, f"the compiled form could not be checked ({type(exc).__name__}: {str(exc)[:300]})")
    if not figures["passed"]:
        return Compiled(None, failure_reason(figures), figures)
    return Compiled(data, f"verified bitwise against scikit-learn on {figures['rows_compared']} rows", figures)


def _example_array(examples: Any, width: int) -> np.ndarray | None:
    if examples is None:
        return None
    try:
        array = np.asarray(examples.to_numpy(dtype=np.float64) if hasattr(examples, "to_numpy") else examples, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.ndim != 2 or array.shape[1] != width:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        return array[np.isfinite(array.astype(np.float32)).all(axis=1)]


__all__ = [
    "Compiled",
    "CompiledPredictor",
    "NotCompilable",
    "RUNTIME_ONNX",
    "RUNTIME_SKLEARN",
    "TOLERANCE",
    "compile_estimator",
    "onnx_bytes",
    "plan_for",
    "session_options",
    "verify_compiled",
]
