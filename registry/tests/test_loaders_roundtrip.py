"""Real fitted models survive every serialization through the safe loader, predicting identically.

This is also how the allow-list was found: any global a common model needs and the
list lacks fails here with the global's name.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import cloudpickle
import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.base import is_classifier, is_regressor
from sklearn.calibration import CalibratedClassifierCV
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
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
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, SGDClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder, OneHotEncoder, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from registry.loaders.safe_pickle import audit_pickle_globals, load_pickle
from registry.loaders.structure import check_model_structures

RNG = np.random.RandomState(0)
X = RNG.rand(60, 4)
Y_CLASS = (X[:, 0] + X[:, 1] > 1).astype(int)
Y_REG = X @ np.array([1.0, 2.0, -1.0, 0.5])
Y_STRINGS = np.array(["cat", "dog", "fish"], dtype=object)[(X[:, 2] * 3).astype(int)]
FRAME = pd.DataFrame(
    {
        "age": RNG.rand(60) * 50,
        "income": RNG.rand(60) * 1000,
        "city": RNG.choice(["paris", "lima", "oslo"], 60),
    }
)
FRAME.loc[3, "age"] = np.nan

ESTIMATORS: dict[str, Callable[[], Any]] = {
    "LogisticRegression": LogisticRegression,
    "LinearRegression": LinearRegression,
    "Ridge": Ridge,
    "SGDClassifier": lambda: SGDClassifier(random_state=0),
    "SGDClassifier_modified_huber": lambda: SGDClassifier(loss="modified_huber", random_state=0),
    "SVC_probability": lambda: SVC(probability=True, random_state=0),
    "KNeighborsClassifier": KNeighborsClassifier,
    "KNeighborsRegressor_ball_tree": lambda: KNeighborsRegressor(algorithm="ball_tree"),
    "DecisionTreeClassifier": lambda: DecisionTreeClassifier(random_state=0),
    "DecisionTreeRegressor": lambda: DecisionTreeRegressor(random_state=0),
    "RandomForestClassifier": lambda: RandomForestClassifier(n_estimators=5, random_state=0),
    "RandomForestRegressor": lambda: RandomForestRegressor(n_estimators=5, random_state=0),
    "ExtraTreesClassifier": lambda: ExtraTreesClassifier(n_estimators=5, random_state=0),
    "ExtraTreesRegressor": lambda: ExtraTreesRegressor(n_estimators=5, random_state=0),
    "GradientBoostingClassifier": lambda: GradientBoostingClassifier(n_estimators=5, random_state=0),
    "GradientBoostingRegressor": lambda: GradientBoostingRegressor(n_estimators=5, random_state=0),
    "HistGradientBoostingClassifier": lambda: HistGradientBoostingClassifier(max_iter=5, random_state=0),
    "HistGradientBoostingRegressor": lambda: HistGradientBoostingRegressor(max_iter=5, random_state=0),
    "GaussianNB": GaussianNB,
    "MLPClassifier": lambda: MLPClassifier(hidden_layer_sizes=(5,), max_iter=30, random_state=0),
    "KMeans": lambda: KMeans(n_clusters=2, n_init=1, random_state=0),
    "GridSearchCV": lambda: GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=2),
    "CalibratedClassifierCV_SVC": lambda: CalibratedClassifierCV(SVC(), ensemble=False),
}

SERIALIZERS: dict[str, Callable[[Any], bytes]] = {
    **{
        f"pickle_protocol{protocol}": (lambda model, protocol=protocol: pickle.dumps(model, protocol=protocol))
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1)
    },
    "joblib": lambda model: _joblib(model, compress=0),
    "joblib_protocol2": lambda model: _joblib(model, compress=0, protocol=2),
    "joblib_zlib": lambda model: _joblib(model, compress=3),
    "cloudpickle": cloudpickle.dumps,
}
COMPRESSORS = ["gzip", "bz2", "lzma", "xz"]


def _joblib(model: Any, *, compress: int | tuple[str, int], protocol: int | None = None) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer, compress=compress, protocol=protocol)
    return buffer.getvalue()


def _fit(name: str) -> Any:
    model = ESTIMATORS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # SVC(probability=True) is deprecated in 1.9 but still what most uploaded SVCs use.
        warnings.filterwarnings("ignore", message="The `probability` parameter", category=FutureWarning)
        if isinstance(model, KMeans):
            return model.fit(X)
        return model.fit(X, Y_REG if is_regressor(model) else Y_CLASS)


def _pipeline() -> Pipeline:
    columns = ColumnTransformer(
        [
            ("numbers", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), ["age", "income"]),
            ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
        ]
    )
    model = Pipeline([("columns", columns), ("pca", PCA(n_components=2)), ("model", LogisticRegression())])
    return model.fit(FRAME, Y_STRINGS)


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    models = {name: _fit(name) for name in ESTIMATORS}
    models["Pipeline_ColumnTransformer_DataFrame"] = _pipeline()
    models["RandomForest_string_classes"] = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, Y_STRINGS)
    return models


def _inputs(name: str) -> Any:
    return FRAME if name.startswith("Pipeline") else X


def _assert_same_predictions(original: Any, loaded: Any, data: Any) -> None:
    assert type(loaded) is type(original)
    np.testing.assert_array_equal(loaded.predict(data), original.predict(data))
    if is_classifier(original) and hasattr(original, "predict_proba"):
        np.testing.assert_array_equal(loaded.predict_proba(data), original.predict_proba(data))


# How many trees, gradient-boosting predictors and neighbour trees each model holds.
STRUCTURES = {
    "KNeighborsClassifier": 1,
    "KNeighborsRegressor_ball_tree": 1,
    "DecisionTreeClassifier": 1,
    "DecisionTreeRegressor": 1,
    "RandomForestClassifier": 5,
    "RandomForestRegressor": 5,
    "ExtraTreesClassifier": 5,
    "ExtraTreesRegressor": 5,
    "GradientBoostingClassifier": 5,
    "GradientBoostingRegressor": 5,
    "HistGradientBoostingClassifier": 5,
    "HistGradientBoostingRegressor": 5,
    "RandomForest_string_classes": 3,
}
MODEL_NAMES = [*ESTIMATORS, "Pipeline_ColumnTransformer_DataFrame", "RandomForest_string_classes"]


@pytest.mark.parametrize("serializer", list(SERIALIZERS))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_loads_through_the_safe_path_and_predicts_identically(fitted: dict[str, Any], name: str, serializer: str) -> None:
    original = fitted[name]
    loaded = load_pickle(source=SERIALIZERS[serializer](original))
    _assert_same_predictions(original, loaded.obj, _inputs(name))
    assert loaded.audit.sklearn_versions == (sklearn.__version__,)
    # No false alarm from the structure check on real models.
    assert check_model_structures(model=loaded.obj) == STRUCTURES.get(name, 0)


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_pipeline_loads_from_every_joblib_compressor(fitted: dict[str, Any], compressor: str) -> None:
    original = fitted["Pipeline_ColumnTransformer_DataFrame"]
    loaded = load_pickle(source=_joblib(original, compress=(compressor, 3)))
    assert loaded.compression == compressor
    _assert_same_predictions(original, loaded.obj, FRAME)


def test_joblib_object_arrays_are_read_by_the_restricted_unpickler(fitted: dict[str, Any]) -> None:
    # feature_names_in_, categories_ and string classes_ are object arrays: nested pickles in joblib.
    loaded = load_pickle(source=_joblib(fitted["Pipeline_ColumnTransformer_DataFrame"], compress=0))
    assert loaded.audit.nested_pickles == 5
    assert list(loaded.obj.feature_names_in_) == ["age", "income", "city"]
    assert list(loaded.obj.classes_) == ["cat", "dog", "fish"]


def test_label_encoder_with_string_classes_round_trips() -> None:
    encoder = LabelEncoder().fit(["paris", "lima", "oslo", "lima"])
    for data in (pickle.dumps(encoder, protocol=0), _joblib(encoder, compress=3), cloudpickle.dumps(encoder)):
        loaded = load_pickle(source=data).obj
        assert list(loaded.classes_) == ["lima", "oslo", "paris"]
        assert loaded.transform(["oslo", "paris"]).tolist() == [1, 2]


def test_audit_lists_the_globals_a_plain_model_needs(fitted: dict[str, Any]) -> None:
    loaded = load_pickle(source=pickle.dumps(fitted["LogisticRegression"], protocol=5))
    assert loaded.audit.globals == (
        "sklearn.linear_model._logistic.LogisticRegression",
        "numpy._core.numeric._frombuffer",
        "numpy.dtype",
    )
    assert loaded.audit.joblib_arrays == 0


def test_uncompressed_joblib_array_data_is_skipped_not_read_by_the_audit(tmp_path: Any) -> None:
    weights = np.arange(2_000_000, dtype=np.float64)  # 16 MB of raw array bytes after the wrapper
    path = tmp_path / "weights.joblib"
    joblib.dump({"weights": weights}, path)
    loaded = load_pickle(source=path)
    assert loaded.audit.joblib_arrays == 1
    np.testing.assert_array_equal(loaded.obj["weights"], weights)


def _native_categories(categorical_features: Any, *, as_category_dtype: bool) -> tuple[Any, Any]:
    frame = FRAME.copy()
    if as_category_dtype:
        frame["city"] = frame["city"].astype("category")
    model = HistGradientBoostingClassifier(max_iter=5, categorical_features=categorical_features, random_state=0)
    return model.fit(frame, Y_STRINGS), frame


@pytest.mark.parametrize("serializer", list(SERIALIZERS))
@pytest.mark.parametrize(
    ("categorical_features", "as_category_dtype"),
    [
        pytest.param("from_dtype", True, id="from_dtype"),
        pytest.param([False, False, True], False, id="boolean_mask"),
        pytest.param([2], False, id="indices"),
        pytest.param(["city"], False, id="names"),
    ],
)
def test_hist_gradient_boosting_with_native_categories_loads_and_pickles_back_as_plain_partial(
    categorical_features: Any, as_category_dtype: bool, serializer: str
) -> None:
    # Its numeric columns go through FunctionTransformer(partial(check_array, ...)): the one partial allowed.
    original, frame = _native_categories(categorical_features, as_category_dtype=as_category_dtype)
    loaded = load_pickle(source=SERIALIZERS[serializer](original))
    _assert_same_predictions(original, loaded.obj, frame)
    # What the upload sandbox writes as the serving artifact names functools.partial, never the stand-in.
    serving = pickle.dumps(loaded.obj, protocol=5)
    assert b"CheckedPartial" not in serving
    assert "functools.partial" in audit_pickle_globals(source=serving).globals
    _assert_same_predictions(original, load_pickle(source=serving).obj, frame)


@pytest.mark.parametrize("serializer", list(SERIALIZERS))
@pytest.mark.parametrize("ufunc", ["log1p", "log", "sqrt", "absolute"])
def test_transformers_of_the_allowed_numpy_ufuncs_load_bound_to_the_real_ufunc(serializer: str, ufunc: str) -> None:
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.preprocessing import FunctionTransformer

    from registry.loaders.serving import load_serving_artifact

    x = np.abs(X) + 1.0
    inverse = {"log1p": np.expm1, "log": np.exp, "sqrt": None, "absolute": None}[ufunc]
    models = [
        Pipeline([("f", FunctionTransformer(getattr(np, ufunc), inverse_func=inverse)), ("m", LinearRegression())]).fit(x, Y_REG)
    ]
    if inverse is not None:  # a TransformedTargetRegressor needs both
        models.append(
            TransformedTargetRegressor(LinearRegression(), func=getattr(np, ufunc), inverse_func=inverse).fit(
                x, np.abs(Y_REG) + 1
            )
        )
    for original in models:
        loaded = load_pickle(source=SERIALIZERS[serializer](original)).obj
        check_model_structures(model=loaded)  # binds the ufuncs
        np.testing.assert_array_equal(loaded.predict(x), original.predict(x))
        # The serving artifact the sandbox writes from it loads the same way.
        np.testing.assert_array_equal(
            load_serving_artifact(data=pickle.dumps(loaded, protocol=5)).predict(x), original.predict(x)
        )
