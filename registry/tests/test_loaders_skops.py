"""skops files: skops' audit of untrusted types, judged by the same allow-list as pickles."""

from __future__ import annotations

import builtins
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sklearn
import skops.io
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from platform_site.errors import InvalidArtifact, PayloadTooLarge, UnsafeArtifact
from registry.loaders.skops_format import audit_skops_types, load_skops

RNG = np.random.RandomState(3)
X = RNG.rand(50, 4)
Y = (X[:, 1] > 0.5).astype(int)
FRAME = pd.DataFrame({"size": RNG.rand(50), "colour": RNG.choice(["red", "blue"], 50)})


class TenantScaler(TransformerMixin, BaseEstimator):
    """An estimator defined outside scikit-learn: skops would import and build it."""

    def fit(self, X: Any, y: Any = None) -> TenantScaler:
        return self

    def transform(self, X: Any) -> Any:
        return X


def _frame_pipeline() -> Pipeline:
    numbers = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())])  # SimpleImputer keeps a numpy.dtype
    columns = ColumnTransformer([("size", numbers, ["size"]), ("colour", OneHotEncoder(), ["colour"])])
    return Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(FRAME, Y)


MODELS = {
    "logistic": (lambda: LogisticRegression().fit(X, Y), X, ()),
    "random_forest": (
        lambda: RandomForestClassifier(n_estimators=3, random_state=0).fit(X, Y),
        X,
        ("sklearn.tree._tree.Tree",),
    ),
    "kneighbors": (
        lambda: KNeighborsClassifier().fit(X, Y),
        X,
        ("sklearn.metrics._dist_metrics.EuclideanDistance64", "sklearn.neighbors._kd_tree.KDTree"),
    ),
    "hist_gradient_boosting": (
        lambda: HistGradientBoostingRegressor(max_iter=3).fit(X, X[:, 0]),
        X,
        ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",),
    ),
    "mlp": (
        lambda: MLPClassifier(hidden_layer_sizes=(3,), max_iter=5, random_state=0).fit(X, Y),
        X,
        ("sklearn.neural_network._stochastic_optimizers.AdamOptimizer",),
    ),
    "dataframe_pipeline": (_frame_pipeline, FRAME, ("numpy.dtype",)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_skops_model_loads_trusting_exactly_the_audited_types(tmp_path: Path, name: str) -> None:
    build, data, expected_trusted = MODELS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the MLP stops after 5 iterations
        original = build()
    path = tmp_path / "model.skops"
    skops.io.dump(original, path)
    loaded = load_skops(path=path)
    assert loaded.trusted_types == expected_trusted
    assert loaded.sklearn_versions == (sklearn.__version__,)
    np.testing.assert_array_equal(loaded.obj.predict(data), original.predict(data))


@pytest.mark.parametrize(
    ("model", "refused"),
    [
        pytest.param(FunctionTransformer(func=builtins.eval), ["builtins.eval"], id="eval_in_function_transformer"),
        pytest.param(FunctionTransformer(func=os.system), [f"{os.system.__module__}.system"], id="os_system"),
        pytest.param(TenantScaler(), [f"{__name__}.TenantScaler"], id="custom_class"),
        pytest.param(
            Pipeline([("mine", TenantScaler()), ("run", FunctionTransformer(func=builtins.exec))]),
            ["builtins.exec", f"{__name__}.TenantScaler"],
            id="every_refused_type_named",
        ),
    ],
)
def test_types_off_the_allow_list_are_refused_by_name(tmp_path: Path, model: Any, refused: list[str]) -> None:
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)
    with pytest.raises(UnsafeArtifact) as raised:
        load_skops(path=path)
    assert raised.value.refused_globals == refused
    assert raised.value.detail == "The model file refers to globals outside the allow-list: " + ", ".join(refused)


def test_skops_default_trusted_functions_still_load(tmp_path: Path) -> None:
    # skops itself trusts numpy ufuncs such as np.log1p; they never reach our audit.
    path = tmp_path / "model.skops"
    skops.io.dump(FunctionTransformer(func=np.log1p), path)
    assert audit_skops_types(path=path) == []
    assert load_skops(path=path).obj.func is np.log1p


def test_zip_without_schema_is_not_a_skops_file(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights.npy", b"x")
    with pytest.raises(InvalidArtifact) as raised:
        load_skops(path=path)
    assert raised.value.detail == "The file is a zip without schema.json, so not a skops file."


def test_file_that_is_not_a_zip_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    path.write_bytes(b"\x80\x04not a zip")
    with pytest.raises(InvalidArtifact, match="The skops file is not a readable zip file: File is not a zip file"):
        load_skops(path=path)


def test_broken_schema_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("schema.json", b"{not json")
    with pytest.raises(InvalidArtifact, match="^The skops file could not be read: JSONDecodeError"):
        load_skops(path=path)


def test_skops_zip_bomb_is_payload_too_large(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", b"{}")
        archive.writestr("zeros.npy", bytes(8 * 1024 * 1024))
    with pytest.raises(PayloadTooLarge, match=r"^The archive expands \d+ times its compressed size; the limit is 100 times\.$"):
        load_skops(path=path)
