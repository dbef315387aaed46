"""Check the arrays scikit-learn's Cython code indexes without bounds checks.

The allow-list stops a file from running code; it does not stop a file from describing
a decision tree whose child indices point past its node array. scikit-learn trusts
those indices (``Tree.__setstate__`` checks dtypes and shapes, not values), so
``predict`` would read memory outside the model: in a server holding other tenants'
models and requests, a leak, or an endless loop when a child points back at its parent.
skops refuses to trust ``sklearn.tree._tree.Tree`` by default for the same reason.

After every load we walk the model and check, with numpy, the structures predict
follows: ``Tree`` (all decision-tree ensembles), HistGradientBoosting's
``TreePredictor`` and the KDTree/BallTree of nearest-neighbour models. Other Cython
state (distance-metric parameters, loss objects) is not checked here.

The same walk checks every numpy value it reaches, before reading any element
(``dtypes.array_problem``): each dtype exactly what numpy builds from its descriptor (an
'O8' dtype whose flags were cleared by BUILD state holds raw bytes numpy dereferences as
pointers), no array viewing an object array's memory, and object arrays holding only str,
int, float, bool, None or numpy numbers and strings.

It also binds the numpy ufuncs the allow-list lets a FunctionTransformer or a
TransformedTargetRegressor hold (``allowlist.TRANSFORMER_UFUNCS``): the unpickler hands out
an inert ``UfuncReference``; the walk puts the real ufunc in those estimators' ``func`` and
``inverse_func`` and refuses a model with a reference anywhere else.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np

from platform_site.errors import InvalidArtifact, UnsafeArtifact

from .allowlist import UFUNC_HOLDERS
from .dtypes import array_problem, dtype_problem
from .safe_pickle import UfuncReference

# A fitted pipeline has hundreds of objects; this bounds the walk on a hostile graph.
_MAX_OBJECTS = 1_000_000


def check_model_structures(*, model: Any) -> int:
    """Check every tree/predictor/neighbour index reachable from ``model``; return how many.

    Raises InvalidArtifact naming the first structure whose indices point outside it,
    UnsafeArtifact for a non-canonical dtype or an object array of anything but plain values.
    """
    from sklearn.base import BaseEstimator

    # A class whose module was never imported has no instances: skip importing it.
    tree_type = _loaded_class("sklearn.tree._tree", "Tree")
    predictor_type = _loaded_class("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor")
    neighbour_types = tuple(
        cls
        for cls in (
            _loaded_class("sklearn.neighbors._kd_tree", "KDTree"),
            _loaded_class("sklearn.neighbors._ball_tree", "BallTree"),
        )
        if cls is not _Never
    )
    checked = 0
    seen: set[int] = set()
    # (object, n_features_in_ of the nearest estimator above it)
    pending: list[tuple[Any, int | None]] = [(model, None)]
    while pending:
        obj, n_features = pending.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        if len(seen) > _MAX_OBJECTS:
            raise InvalidArtifact(f"The model holds more than {_MAX_OBJECTS} objects.")
        if isinstance(obj, np.ndarray):
            # Before anything reads its elements: with a forged dtype, reading them is the attack.
            problem = array_problem(obj)
            if problem is not None:
                raise UnsafeArtifact(f"The model file is refused: {problem}.")
        elif isinstance(obj, np.dtype):
            problem = dtype_problem(obj)
            if problem is not None:
                raise UnsafeArtifact(f"The model file is refused: a numpy dtype is not canonical: its {problem}.")
        if isinstance(obj, tree_type):
            _check_tree(obj, n_features=n_features)
            checked += 1
        elif isinstance(obj, predictor_type):
            _check_predictor(obj, n_features=n_features)
            checked += 1
        elif neighbour_types and isinstance(obj, neighbour_types):
            _check_neighbour_tree(obj)
            checked += 1
        elif isinstance(obj, UfuncReference):
            raise UnsafeArtifact(
                f"The model file is refused: it holds {obj.name} where only a FunctionTransformer's func or inverse_func may.",
                refused_globals=[obj.name],
            )
        elif isinstance(obj, BaseEstimator):
            _bind_ufuncs(obj)
            own = getattr(obj, "__dict__", {}).get("n_features_in_")
            n_features = int(own) if isinstance(own, (int, np.integer)) else n_features
            pending.extend((value, n_features) for value in vars(obj).values())
        elif isinstance(obj, dict):
            pending.extend((value, n_features) for value in obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            pending.extend((value, n_features) for value in obj)
        elif isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                pending.extend((value, n_features) for value in np.asarray(obj).ravel())
            pending.extend((value, n_features) for value in getattr(obj, "__dict__", {}).values())  # MaskedArray's mask
        elif isinstance(obj, np.generic):
            problem = dtype_problem(obj.dtype)
            if problem is not None:
                raise UnsafeArtifact(f"The model file is refused: a numpy scalar's dtype is not canonical: its {problem}.")
        elif not isinstance(obj, _OPAQUE) and isinstance(getattr(obj, "__dict__", None), dict):
            # Plain objects (loss functions, calibrators, bunches): their attributes are model state too.
            pending.extend((value, n_features) for value in vars(obj).values())
    return checked


def _bind_ufuncs(estimator: Any) -> None:
    holder = UFUNC_HOLDERS.get(f"{type(estimator).__module__}.{type(estimator).__qualname__}")
    for attribute in holder or ():
        value = vars(estimator).get(attribute)
        if isinstance(value, UfuncReference):
            setattr(estimator, attribute, value.resolve())


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


class _Never:
    """Stands for a class whose module is not imported: nothing is an instance of it."""


def _loaded_class(module: str, name: str) -> type:
    return getattr(sys.modules.get(module), name, _Never)


def _refuse(what: str, problem: str) -> InvalidArtifact:
    return InvalidArtifact(f"The model's {what} is corrupt: {problem}.")


def _check_children(left: np.ndarray, right: np.ndarray, internal: np.ndarray, *, what: str) -> None:
    """Children must lie inside the node array and after their parent (so every path ends)."""
    ids = np.arange(len(left))[internal]
    for name, children in (("left", left[internal]), ("right", right[internal])):
        children = children.astype(np.int64)
        if np.any(children <= ids) or np.any(children >= len(left)):
            raise _refuse(what, f"a {name} child index points outside the node array or back up the tree")


def _check_features(features: np.ndarray, *, limit: int | None, what: str) -> None:
    if features.size and (features.min() < 0 or (limit is not None and features.max() >= limit)):
        raise _refuse(what, f"a split uses a feature index outside 0..{limit}")


def _check_tree(tree: Any, *, n_features: int | None) -> None:
    what = "decision tree"
    # node_count comes from the file; capacity is the real length of the node array.
    if not 0 < tree.node_count <= tree.capacity:
        raise _refuse(what, f"it claims {tree.node_count} nodes but holds {tree.capacity}")
    n_classes = np.asarray(tree.n_classes)
    if n_classes.shape != (tree.n_outputs,) or n_classes.min() < 1 or n_classes.max() != tree.max_n_classes:
        raise _refuse(what, "its class counts do not match its outputs")
    left, right = tree.children_left, tree.children_right
    leaf = left == -1
    if not np.array_equal(leaf, right == -1):
        raise _refuse(what, "a node has exactly one child")
    _check_children(left, right, ~leaf, what=what)
    limit = min(tree.n_features, n_features) if n_features is not None else tree.n_features
    _check_features(tree.feature[~leaf], limit=limit, what=what)


def _check_predictor(predictor: Any, *, n_features: int | None) -> None:
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    what = "gradient-boosting tree"
    nodes = predictor.nodes
    if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE or nodes.ndim != 1 or not len(nodes):
        raise _refuse(what, "its node array has the wrong type")
    internal = nodes["is_leaf"] == 0
    _check_children(nodes["left"], nodes["right"], internal, what=what)
    _check_features(nodes["feature_idx"][internal], limit=n_features, what=what)
    categorical = internal & (nodes["is_categorical"] != 0)
    if categorical.any():
        bitsets = min(len(predictor.raw_left_cat_bitsets), len(predictor.binned_left_cat_bitsets))
        if nodes["bitset_idx"][categorical].max() >= bitsets:
            raise _refuse(what, "a categorical split points outside its bitsets")


def _check_neighbour_tree(tree: Any) -> None:
    what = f"{type(tree).__name__}"
    data, idx_array, node_data, node_bounds = tree.get_arrays()
    n_samples, n_nodes = len(data), len(node_data)
    if len(idx_array) != n_samples or (n_samples and (idx_array.min() < 0 or idx_array.max() >= n_samples)):
        raise _refuse(what, "its sample index points outside its data")
    if not n_nodes or node_bounds.shape[1:] != (n_nodes, data.shape[1]):
        raise _refuse(what, "its node bounds do not match its nodes")
    start, end = node_data["idx_start"], node_data["idx_end"]
    if start.min() < 0 or end.max() > n_samples or np.any(start > end):
        raise _refuse(what, "a node's sample range lies outside its data")
    # The query code visits children 2i+1 and 2i+2 of every node not marked as a leaf.
    inner = np.flatnonzero(node_data["is_leaf"] == 0)
    if inner.size and 2 * inner.max() + 2 >= n_nodes:
        raise _refuse(what, "a node's children lie outside the node array")
