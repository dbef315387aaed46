"""Models whose trees point outside their own arrays are refused before anything predicts.

None of these tests calls predict on a corrupt model: that would read memory outside
the model in this very process.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neighbors._kd_tree import newObj
from sklearn.tree import DecisionTreeClassifier
from sklearn.tree._tree import Tree

from platform_site.errors import InvalidArtifact
from registry.loaders.safe_pickle import load_pickle
from registry.loaders.structure import check_model_structures

X = np.random.RandomState(2).rand(40, 4)
Y = (X[:, 0] > 0.5).astype(int)


class ReduceWithState:
    """Pickles as ``func(*args)`` followed by BUILD with ``state``."""

    def __init__(self, func: Any, args: tuple[Any, ...], state: Any) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple[Any, tuple[Any, ...], Any]:
        return self.func, self.args, self.state


def _save(tmp_path: Path, model: Any) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model, protocol=5))
    return path


def _load_checked(path: Path) -> Any:
    """What ``formats.load_artifact`` does for a pickle: load, then check the structures."""
    model = load_pickle(source=path).obj
    check_model_structures(model=model)
    return model


def _tree_model_with(*, nodes_edit: Any = None, node_count: int | None = None, n_classes: Any = None) -> DecisionTreeClassifier:
    model = DecisionTreeClassifier(random_state=0).fit(X, Y)
    state = model.tree_.__getstate__()
    state["nodes"] = state["nodes"].copy()
    if nodes_edit is not None:
        nodes_edit(state["nodes"])
    if node_count is not None:
        state["node_count"] = node_count
    classes = np.array([2]) if n_classes is None else n_classes
    model.tree_ = ReduceWithState(Tree, (4, classes, 1), state)
    return model


def _set(field: str, value: int) -> Any:
    def edit(nodes: np.ndarray) -> None:
        nodes[field][0] = value

    return edit


@pytest.mark.parametrize(
    ("model", "detail"),
    [
        pytest.param(
            _tree_model_with(nodes_edit=_set("left_child", 10_000)),
            "The model's decision tree is corrupt: a left child index points outside the node array or back up the tree.",
            id="child_past_the_end",
        ),
        pytest.param(
            _tree_model_with(nodes_edit=_set("right_child", 0)),
            "The model's decision tree is corrupt: a right child index points outside the node array or back up the tree.",
            id="child_loops_back",
        ),
        pytest.param(
            _tree_model_with(nodes_edit=_set("feature", 99)),
            "The model's decision tree is corrupt: a split uses a feature index outside 0..4.",
            id="feature_past_the_end",
        ),
        pytest.param(
            _tree_model_with(nodes_edit=_set("left_child", -1)),
            "The model's decision tree is corrupt: a node has exactly one child.",
            id="one_child",
        ),
        pytest.param(
            # An empty tree: predict would read node 0 of an empty array. (A count above the
            # array's length is clamped by Tree.__setstate__ itself.)
            _tree_model_with(node_count=0),
            "The model's decision tree is corrupt: it claims 0 nodes but holds {held}.",
            id="no_nodes",
        ),
        pytest.param(
            _tree_model_with(n_classes=np.array([2])),  # matches; a mismatch is the next test
            None,
            id="sound_tree_loads",
        ),
    ],
)
def test_corrupt_decision_trees_are_refused(tmp_path: Path, model: Any, detail: str | None) -> None:
    path = _save(tmp_path, model)
    if detail is None:
        assert type(_load_checked(path).tree_) is Tree
        return
    held = model.tree_.state["nodes"].shape[0]
    with pytest.raises(InvalidArtifact) as raised:
        _load_checked(path)
    assert raised.value.detail == detail.format(held=held)


def test_tree_with_fewer_class_counts_than_outputs_is_refused_before_it_is_built(tmp_path: Path) -> None:
    # Tree's Cython constructor would copy 3 class counts out of a 1-element array.
    model = DecisionTreeClassifier(random_state=0).fit(X, Y)
    model.tree_ = ReduceWithState(Tree, (4, np.array([2]), 3), {})
    with pytest.raises(InvalidArtifact) as raised:
        _load_checked(_save(tmp_path, model))
    assert raised.value.detail == "The model's decision tree is corrupt: its class counts do not match its outputs."


def test_corrupt_gradient_boosting_predictor_is_refused(tmp_path: Path) -> None:
    model = HistGradientBoostingClassifier(max_iter=3, random_state=0).fit(X, Y)
    nodes = model._predictors[1][0].nodes
    internal = np.flatnonzero(nodes["is_leaf"] == 0)[0]
    nodes["right"][internal] = len(nodes) + 7
    with pytest.raises(InvalidArtifact) as raised:
        _load_checked(_save(tmp_path, model))
    assert raised.value.detail == (
        "The model's gradient-boosting tree is corrupt: a right child index points outside the node array or back up the tree."
    )


def _kneighbors_with(edit: Any) -> KNeighborsClassifier:
    model = KNeighborsClassifier(algorithm="kd_tree").fit(X, Y)
    state = list(model._tree.__getstate__())
    state[1] = state[1].copy()  # idx_array
    state[2] = state[2].copy()  # node_data
    edit(state)
    model._tree = ReduceWithState(newObj, (type(model._tree),), tuple(state))
    return model


@pytest.mark.parametrize(
    ("edit", "detail"),
    [
        pytest.param(
            lambda state: state[1].__setitem__(0, 10_000),
            "The model's KDTree is corrupt: its sample index points outside its data.",
            id="sample_index",
        ),
        pytest.param(
            lambda state: state[2]["idx_end"].__setitem__(0, 10_000),
            "The model's KDTree is corrupt: a node's sample range lies outside its data.",
            id="node_range",
        ),
        pytest.param(
            lambda state: state[2]["is_leaf"].__setitem__(-1, 0),
            "The model's KDTree is corrupt: a node's children lie outside the node array.",
            id="leaf_with_children",
        ),
    ],
)
def test_corrupt_neighbour_trees_are_refused(tmp_path: Path, edit: Any, detail: str) -> None:
    with pytest.raises(InvalidArtifact) as raised:
        _load_checked(_save(tmp_path, _kneighbors_with(edit)))
    assert raised.value.detail == detail


def _holder(value: Any) -> Any:
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])
    model.extra_ = value
    return model


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        pytest.param(
            np.array([(1, None)], dtype=[("a", "i8"), ("b", "O")]),
            "The model file is refused: a structured array holds objects.",
            id="structured_object_field",
        ),
        pytest.param(
            np.ndarray((2,), np.uint64, buffer=np.array([None, True], dtype=object)),
            "The model file is refused: an array reads the memory of an object array (its bytes are pointers).",
            id="view_of_object_memory",
        ),
        pytest.param(
            {"nested": [np.array([{"a": 1}], dtype=object)]},
            "The model file is refused: an object array holds a builtins.dict.",
            id="object_array_of_dicts",
        ),
        pytest.param(
            np.ma.MaskedArray(np.array(["a", None], dtype=object), mask=[False, True]),
            None,
            id="masked_array_of_plain_values_passes",
        ),
    ],
)
def test_unsafe_numpy_values_anywhere_in_the_model_are_refused(value: Any, detail: str | None) -> None:
    from platform_site.errors import UnsafeArtifact

    if detail is None:
        assert check_model_structures(model=_holder(value)) == 0
        return
    with pytest.raises(UnsafeArtifact) as raised:
        check_model_structures(model=_holder(value))
    assert raised.value.detail == detail
