"""The model zoo: common scikit-learn models, fitted here, uploaded through the API and served by every protocol.

Each model is uploaded as a user would (the real sandbox check included), its signature is
checked, and the same rows are predicted through the native JSON endpoint, the Open
Inference Protocol (V2) and MLflow's /invocations; every answer must equal the estimator's
own `predict` / `predict_proba` on those rows, with the labels' own types (a string label
comes back a string, a bool a bool), and a second identical call must be a cache hit with
the same answer. A kind the platform cannot serve must be refused at upload with a 422
naming the reason. Every served kind also runs two batch jobs of 1 000 rows on one real
Celery worker, renders the "Try it" page and answers what its form submits, and gets a
drift report.

Each kind is fitted and uploaded once for the module (the `zoo` fixture, committed so the
worker sees it); each test reads it inside its own transaction.
"""

from __future__ import annotations

import functools
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.cluster import DBSCAN, KMeans
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Perceptron, Ridge, RidgeClassifier
from sklearn.multioutput import MultiOutputClassifier, MultiOutputRegressor
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor, LocalOutlierFactor
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler, TargetEncoder
from sklearn.svm import SVC, SVR, LinearSVC
from sklearn.tree import DecisionTreeClassifier

from analytics.services import drift
from inference import records
from platform_site.redis_client import settle_pending
from registry.tests import factories as f

pytestmark = pytest.mark.django_db

N_FIT = 120
ROWS = 8  # rows predicted per request
NUMERIC_FEATURES = 4


# ------------------------------------------------------------------------------------ data


@functools.lru_cache
def numeric_x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N_FIT, NUMERIC_FEATURES))


def labels(kind: str) -> np.ndarray:
    x = numeric_x()
    score = x[:, 0] + 0.5 * x[:, 1]
    binary = score > 0
    third = np.digitize(score, [-0.5, 0.5])  # 0, 1, 2
    if kind == "int-multiclass":
        return third
    if kind == "string-binary":
        return np.where(binary, "dog", "cat")
    if kind == "string-multiclass":
        return np.array(["setosa", "versicolor", "virginica"])[third]
    if kind == "mixed-width-strings":
        return np.array(["a", "bb", "a much longer label"])[third]
    if kind == "object-strings":
        return pd.Series(np.where(binary, "fraud", "legit"), dtype=object).to_numpy()
    if kind == "bool":
        return binary
    if kind == "multilabel":
        return np.column_stack([binary, x[:, 2] > 0]).astype(int)
    if kind == "multilabel-strings":
        return np.column_stack([np.where(binary, "yes", "no"), np.array(["low", "mid", "high"])[third]])
    raise AssertionError(kind)


def regression_y(outputs: int = 1) -> np.ndarray:
    x = numeric_x()
    y = np.column_stack([x @ [1.5, -2.0, 0.5, 0.0] + 3.0, x[:, 1] * x[:, 2]])
    return y[:, 0] if outputs == 1 else y


@functools.lru_cache
def customers() -> pd.DataFrame:
    """Numeric columns with missing values, string categories, and an integer column."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, N_FIT).round(1),
            "income": rng.normal(50, 15, N_FIT).round(2),
            "city": rng.choice(["paris", "lyon", "nice"], N_FIT),
            "plan": rng.choice(["basic", "pro"], N_FIT),
            "visits": rng.integers(0, 20, N_FIT),
        }
    )
    frame.loc[[1, 5, 30], "age"] = np.nan
    frame.loc[[2, 40], "income"] = np.nan
    return frame


def churn(frame: pd.DataFrame) -> np.ndarray:
    score = (frame["plan"] == "basic") * 1.0 + (frame["city"] == "nice") * 0.8 - frame["visits"].to_numpy() / 10
    return np.where(score > 0.2, "churn", "stay")


def spend(frame: pd.DataFrame) -> np.ndarray:
    return (
        frame["visits"].to_numpy() * 3.0 + (frame["plan"] == "pro") * 20.0 + frame["city"].map({"paris": 5, "lyon": 1, "nice": 3})
    )


def numeric_pipeline() -> Pipeline:
    return make_pipeline(SimpleImputer(strategy="median"), StandardScaler())


# ----------------------------------------------------------------------------------- the zoo


@dataclass(frozen=True)
class Kind:
    """One zoo entry: how to fit it, how to save it, and what the platform must do with it."""

    build: Callable[[], tuple[Any, Any]]  # () -> (fitted estimator, the frame or array it was fitted on)
    fmt: str = "joblib"  # joblib, pickle2..pickle5, skops, mlflow
    example: bool = False  # upload with an input example (the first rows, as records)
    refused: str | None = None  # a 422 at upload whose detail contains this


def on_numeric(estimator, y_kind: str):
    return lambda: (estimator.fit(numeric_x(), labels(y_kind)), numeric_x())


def on_numeric_regression(estimator, outputs: int = 1):
    return lambda: (estimator.fit(numeric_x(), regression_y(outputs)), numeric_x())


def on_numeric_unsupervised(estimator):
    return lambda: (estimator.fit(numeric_x()), numeric_x())


def on_customers(pipeline, target: Callable = churn):
    def build():
        frame = customers()
        return pipeline().fit(frame, target(frame)), frame

    return build


def onehot_logistic() -> Pipeline:
    columns = ColumnTransformer(
        [("num", numeric_pipeline(), ["age", "income"]), ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"])],
        remainder="passthrough",  # visits
    )
    return Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=500))])


def ordinal_forest() -> Pipeline:
    columns = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="mean"), ["age", "income", "visits"]),
            ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), ["city", "plan"]),
        ],
        remainder="drop",
    )
    return Pipeline([("columns", columns), ("model", RandomForestClassifier(n_estimators=20, random_state=0))])


def target_encoded_ridge() -> Pipeline:
    columns = ColumnTransformer(
        [("cat", TargetEncoder(random_state=0), ["city", "plan"]), ("num", numeric_pipeline(), ["age", "income"])],
        remainder="passthrough",
    )
    return Pipeline([("columns", columns), ("model", Ridge())])


def strict_onehot_svc() -> Pipeline:
    columns = ColumnTransformer(
        [("cat", OneHotEncoder(handle_unknown="error"), ["city", "plan"]), ("num", numeric_pipeline(), ["age", "income"])],
        remainder="passthrough",
    )
    return Pipeline([("columns", columns), ("model", SVC())])


def hist_gradient_boosting_native_categories():
    frame = customers().copy()
    frame["city"] = frame["city"].astype("category")
    frame["plan"] = frame["plan"].astype("category")
    model = HistGradientBoostingClassifier(max_iter=20, categorical_features="from_dtype", random_state=0)
    return model.fit(frame, churn(frame)), frame


def hist_gradient_boosting_categorical_mask():
    frame = customers()
    is_categorical = [column in ("city", "plan") for column in frame.columns]
    model = HistGradientBoostingRegressor(max_iter=20, categorical_features=is_categorical, random_state=0)
    return model.fit(frame, spend(frame)), frame


def log1p_pipeline():
    model = make_pipeline(FunctionTransformer(np.log1p, inverse_func=np.expm1), LinearRegression())
    x = np.abs(numeric_x())
    return model.fit(x, regression_y()), x


def transformed_target_log1p():
    model = TransformedTargetRegressor(make_pipeline(FunctionTransformer(np.sqrt), Ridge()), func=np.log1p, inverse_func=np.expm1)
    x = np.abs(numeric_x())
    return model.fit(x, np.abs(regression_y())), x


def sin_pipeline():
    model = make_pipeline(FunctionTransformer(np.sin), LinearRegression())
    return model.fit(numeric_x(), regression_y()), numeric_x()


ZOO: dict[str, Kind] = {
    # classifiers on a numeric array, every label type
    "logistic-string-binary": Kind(on_numeric(LogisticRegression(), "string-binary")),
    "logistic-int-multiclass-pickle2": Kind(on_numeric(LogisticRegression(max_iter=500), "int-multiclass"), fmt="pickle2"),
    "logistic-bool-pickle3": Kind(on_numeric(LogisticRegression(), "bool"), fmt="pickle3"),
    "logistic-mixed-width-strings-pickle4": Kind(
        on_numeric(LogisticRegression(max_iter=500), "mixed-width-strings"), fmt="pickle4"
    ),
    "logistic-object-strings-pickle5": Kind(on_numeric(LogisticRegression(), "object-strings"), fmt="pickle5"),
    "svc-without-proba-string-skops": Kind(on_numeric(SVC(), "string-multiclass"), fmt="skops"),
    "svc-with-proba-int": Kind(on_numeric(SVC(probability=True, random_state=0), "int-multiclass")),
    "linear-svc-string": Kind(on_numeric(LinearSVC(), "string-binary")),
    "ridge-classifier-string": Kind(on_numeric(RidgeClassifier(), "string-multiclass")),
    "perceptron-int": Kind(on_numeric(Perceptron(random_state=0), "int-multiclass")),
    "decision-tree-bool": Kind(on_numeric(DecisionTreeClassifier(max_depth=4, random_state=0), "bool")),
    "random-forest-string-multiclass": Kind(
        on_numeric(RandomForestClassifier(n_estimators=20, random_state=0), "string-multiclass")
    ),
    "extra-trees-bool-skops": Kind(on_numeric(ExtraTreesClassifier(n_estimators=20, random_state=0), "bool"), fmt="skops"),
    "gradient-boosting-string-binary": Kind(
        on_numeric(GradientBoostingClassifier(n_estimators=20, random_state=0), "string-binary")
    ),
    "knn-mixed-width-strings": Kind(on_numeric(KNeighborsClassifier(), "mixed-width-strings")),
    "gaussian-nb-string-pickle5": Kind(on_numeric(GaussianNB(), "string-multiclass"), fmt="pickle5"),
    "mlp-string": Kind(on_numeric(MLPClassifier(hidden_layer_sizes=(8,), max_iter=300, random_state=0), "string-binary")),
    # multi-label classifiers
    "multilabel-random-forest": Kind(on_numeric(RandomForestClassifier(n_estimators=10, random_state=0), "multilabel")),
    "multilabel-knn-strings": Kind(on_numeric(KNeighborsClassifier(), "multilabel-strings")),
    "multi-output-logistic-strings": Kind(on_numeric(MultiOutputClassifier(LogisticRegression()), "multilabel-strings")),
    # regressors, single and multi-output
    "linear-regression": Kind(on_numeric_regression(LinearRegression())),
    "ridge-pickle2": Kind(on_numeric_regression(Ridge()), fmt="pickle2"),
    "svr": Kind(on_numeric_regression(SVR())),
    "knn-regressor-skops": Kind(on_numeric_regression(KNeighborsRegressor()), fmt="skops"),
    "gradient-boosting-regressor": Kind(on_numeric_regression(GradientBoostingRegressor(n_estimators=20, random_state=0))),
    "random-forest-regressor-2-targets": Kind(
        on_numeric_regression(RandomForestRegressor(n_estimators=10, random_state=0), outputs=2)
    ),
    "multi-output-regressor": Kind(on_numeric_regression(MultiOutputRegressor(Ridge()), outputs=2)),
    # pipelines on DataFrames with string categories and missing values
    "pipeline-onehot-impute-scale-logistic": Kind(on_customers(onehot_logistic), example=True),
    "pipeline-ordinal-forest-skops": Kind(on_customers(ordinal_forest), fmt="skops", example=True),
    "pipeline-target-encoder-ridge": Kind(on_customers(target_encoded_ridge, spend), example=True),
    # HistGradientBoosting with native categories keeps a functools.partial(check_array): the one partial allowed.
    # Its own OrdinalEncoder maps categories by value, so string columns over the wire answer as the category dtype did.
    "hist-gradient-boosting-native-categories": Kind(hist_gradient_boosting_native_categories, example=True),
    "hist-gradient-boosting-categorical-mask-pickle5": Kind(hist_gradient_boosting_categorical_mask, fmt="pickle5", example=True),
    "pipeline-without-example": Kind(on_customers(onehot_logistic), refused="input_example"),
    # numpy ufuncs the safe loader allows as a FunctionTransformer's or TransformedTargetRegressor's func
    "function-transformer-log1p": Kind(log1p_pipeline),
    "transformed-target-log1p-pickle3": Kind(transformed_target_log1p, fmt="pickle3"),
    # outlier detectors (predict is -1/1) and clusterers (predict is a cluster id)
    "isolation-forest": Kind(on_numeric_unsupervised(IsolationForest(n_estimators=10, random_state=0))),
    "local-outlier-factor-novelty-pickle4": Kind(on_numeric_unsupervised(LocalOutlierFactor(novelty=True)), fmt="pickle4"),
    "kmeans": Kind(on_numeric_unsupervised(KMeans(n_clusters=3, n_init=2, random_state=0))),
    "pipeline-scale-kmeans-skops": Kind(
        on_numeric_unsupervised(make_pipeline(StandardScaler(), KMeans(n_clusters=4, n_init=2, random_state=0))), fmt="skops"
    ),
    # MLflow model folders as zip
    "mlflow-pipeline-string-columns": Kind(on_customers(onehot_logistic), fmt="mlflow"),
    "mlflow-logistic-string-labels": Kind(on_numeric(LogisticRegression(), "string-binary"), fmt="mlflow"),
    # kinds the platform refuses at upload
    "function-transformer-sin": Kind(sin_pipeline, refused="numpy.sin"),
    # skops would hand out the real functools.partial, so its trusted types leave it out: save such a model with joblib.
    "hist-gradient-boosting-native-categories-skops": Kind(
        hist_gradient_boosting_native_categories, fmt="skops", example=True, refused="functools.partial"
    ),
    "local-outlier-factor-without-novelty": Kind(
        on_numeric_unsupervised(LocalOutlierFactor()), refused="fit it with LocalOutlierFactor(novelty=True)"
    ),
    "dbscan-without-predict": Kind(on_numeric_unsupervised(DBSCAN()), refused="has no predict for new rows"),
}
SERVED = [name for name, kind in ZOO.items() if kind.refused is None]
REFUSED = [name for name, kind in ZOO.items() if kind.refused is not None]


@functools.lru_cache
def fitted(name: str) -> tuple[Any, Any]:
    return ZOO[name].build()


# ------------------------------------------------------------------------------- uploading


def records_of(x, rows: int) -> list:
    """Rows as JSON: records (null for a missing value) for a frame, lists of floats for an array."""
    if isinstance(x, pd.DataFrame):
        head = x.iloc[:rows].astype(object)
        return [
            {
                k: (None if isinstance(v, float) and np.isnan(v) else (v.item() if hasattr(v, "item") else v))
                for k, v in row.items()
            }
            for row in head.to_dict("records")
        ]
    return x[:rows].tolist()


def artifact_bytes(name: str, tmp_path) -> tuple[bytes, str]:
    estimator, x = fitted(name)
    fmt = ZOO[name].fmt
    if fmt == "joblib":
        return f.joblib_bytes(estimator), "model.joblib"
    if fmt.startswith("pickle"):
        return pickle.dumps(estimator, protocol=int(fmt[-1])), "model.pkl"
    if fmt == "skops":
        return f.skops_bytes(estimator), "model.skops"
    example = x.iloc[:5] if isinstance(x, pd.DataFrame) else x[:5]
    return f.mlflow_zip_bytes(estimator, tmp_path, input_example=example), "model.zip"


def upload(tenant, name: str, tmp_path, **fields):
    client = tenant.jwt_client()
    created = client.post("/api/v1/models", {"org": tenant.organization.slug, "name": name}, format="json")
    assert created.status_code == 201, created.content
    content, filename = artifact_bytes(name, tmp_path)
    data = {"file": f.upload_file(content, filename)}
    if ZOO[name].example:
        data["input_example"] = orjson.dumps(records_of(fitted(name)[1], 5)).decode()
    data.update(fields)
    return client.post(f"/api/v1/models/{tenant.organization.slug}/{name}/versions", data, format="multipart")


def expected_types(x) -> list[str]:
    if not isinstance(x, pd.DataFrame):
        return ["double"] * x.shape[1]
    kinds = {"f": "double", "i": "long", "b": "boolean"}
    return [kinds.get(getattr(dtype, "kind", "O"), "string") for dtype in x.dtypes]


# ------------------------------------------------------------------------------- comparing


def as_json(values) -> Any:
    from inference.protocols.outputs import json_values

    return orjson.loads(orjson.dumps(json_values(values), option=orjson.OPT_SERIALIZE_NUMPY))


def flat(values) -> list:
    return [item for value in values for item in flat(value)] if isinstance(values, list) else [values]


def assert_same_labels(got, want) -> None:
    """Equal values of the same JSON types: True is not 1, "1" is not 1."""
    assert got == want
    assert [type(v) for v in flat(got)] == [type(v) for v in flat(want)]


def assert_same_probabilities(got, want) -> None:
    if isinstance(want, list) and want and isinstance(want[0], list) and want[0] and isinstance(want[0][0], list):
        for part_got, part_want in zip(got, want, strict=True):
            np.testing.assert_allclose(np.array(part_got), np.array(part_want), rtol=1e-9, atol=1e-12)
        return
    np.testing.assert_allclose(np.array(got, dtype=float), np.array(want, dtype=float), rtol=1e-9, atol=1e-12)


def own_answer(name: str) -> tuple[Any, Any]:
    """The estimator's own predict (and predict_proba, when it has one) on the rows the test sends."""
    estimator, x = fitted(name)
    rows = x.iloc[:ROWS] if isinstance(x, pd.DataFrame) else x[:ROWS]
    try:
        proba = estimator.predict_proba(rows)
    except AttributeError:
        proba = None
    return as_json(estimator.predict(rows)), as_json(proba) if proba is not None else None


V2_DATATYPES = {"double": "FP64", "long": "INT64", "boolean": "BOOL", "string": "BYTES"}


def v2_body(signature: dict, rows: list, *, want_proba: bool) -> dict:
    columns = signature["inputs"]
    if isinstance(rows[0], dict):
        rows = [[row[c["name"]] for c in columns] for row in rows]
    if all(c["type"] == "double" for c in columns):
        inputs = [{"name": "input-0", "shape": [len(rows), len(columns)], "datatype": "FP64", "data": rows}]
    else:
        inputs = [
            {"name": c["name"], "shape": [len(rows)], "datatype": V2_DATATYPES[c["type"]], "data": [row[i] for row in rows]}
            for i, c in enumerate(columns)
        ]
    outputs = [{"name": "predict"}] + ([{"name": "predict_proba"}] if want_proba else [])
    return {"inputs": inputs, "outputs": outputs}


def v2_datatype(values: list) -> str:
    kinds = {type(v) for v in flat(values)}
    return {frozenset({str}): "BYTES", frozenset({bool}): "BOOL", frozenset({int}): "INT64"}.get(frozenset(kinds), "FP64")


def v2_values(tensor: dict, want: list) -> list:
    """A V2 tensor's flat data back in the shape of `want`."""
    return np.array(tensor["data"], dtype=object).reshape(np.shape(want)).tolist() if tensor["data"] else []


def is_multi_output(probabilities: list) -> bool:
    return (
        bool(probabilities)
        and isinstance(probabilities[0], list)
        and bool(probabilities[0])
        and isinstance(probabilities[0][0], list)
    )


# ----------------------------------------------------------------------- the uploaded zoo


ZOO_ORG = "zoo"


@dataclass
class Zoo:
    """Every kind uploaded once, committed, for the whole module: the upload's status and answer by name."""

    tenant: Any
    uploads: dict[str, Any]  # the upload's response by kind

    def version(self, name: str) -> dict:
        response = self.uploads[name]
        assert response.status_code == 201, response.content
        return response.json()


def reference_frame(x) -> pd.DataFrame:
    return x if isinstance(x, pd.DataFrame) else pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])


@pytest.fixture(scope="module")
def zoo(django_db_setup, django_db_blocker, tmp_path_factory):
    """Uploads every kind through the API once (the sandbox check included), with its training
    rows as reference data for the drift reports, committed so that the batch workers see them.

    The module's tests read these versions inside their own transactions; the database is
    emptied at the end, as a transactional test leaves it.
    """
    from django.core.management import call_command

    from conftest import make_tenant

    folder = tmp_path_factory.mktemp("zoo")
    with django_db_blocker.unblock():
        try:
            tenant = make_tenant(ZOO_ORG)
            uploads = {}
            for name, kind in ZOO.items():
                fields = {}
                if kind.refused is None:
                    fields["reference_data"] = f.upload_file(
                        reference_frame(fitted(name)[1]).to_csv(index=False).encode(), "reference.csv"
                    )
                (folder / name).mkdir()
                uploads[name] = upload(tenant, name, folder / name, **fields)
            yield Zoo(tenant=tenant, uploads=uploads)
        finally:
            call_command("flush", interactive=False, verbosity=0)


def zoo_url(name: str, action: str) -> str:
    return f"/api/v1/models/{ZOO_ORG}/{name}/versions/1/{action}"


# ------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("name", SERVED)
def test_zoo_model_serves_every_protocol_as_it_predicts(name, zoo, client):
    _, x = fitted(name)
    version = zoo.version(name)
    signature = version["signature"]
    assert [c["type"] for c in signature["inputs"]] == expected_types(x)
    if isinstance(x, pd.DataFrame):
        assert [c["name"] for c in signature["inputs"]] == list(x.columns)
        assert [c["name"] for c in signature["inputs"] if c.get("allow_missing")] == [c for c in x.columns if x[c].isna().any()]

    rows = records_of(x, ROWS)
    predictions, probabilities = own_answer(name)
    has_proba = probabilities is not None
    assert version["has_predict_proba"] is has_proba
    headers = {"HTTP_X_API_KEY": zoo.tenant.api_key}

    native = {"inputs": rows, "parameters": {"probabilities": has_proba}}
    for attempt in ("MISS", "HIT"):
        answer = client.post(zoo_url(name, "predict"), orjson.dumps(native), content_type="application/json", **headers)
        assert answer.status_code == 200, answer.content
        assert answer["X-Cache"] == attempt
        assert_same_labels(answer.json()["predictions"], predictions)
        if has_proba:
            assert_same_probabilities(answer.json()["probabilities"], probabilities)

    metadata = client.get(f"/v2/models/{name}/versions/1", **headers)
    assert metadata.status_code == 200, metadata.content
    assert metadata.json()["outputs"][0] == {"name": "predict", "datatype": v2_datatype(predictions), "shape": [-1]}

    # Multi-output probabilities with different class counts are no single tensor (the native answer has them).
    v2_proba = has_proba and (not is_multi_output(probabilities) or len({np.shape(part) for part in probabilities}) == 1)
    v2_request = v2_body(signature, rows, want_proba=v2_proba)
    for attempt in ("either", "HIT"):  # rows sent as a frame share the native request's cache entry
        answer = client.post(
            f"/v2/models/{name}/versions/1/infer", orjson.dumps(v2_request), content_type="application/json", **headers
        )
        assert answer.status_code == 200, answer.content
        assert answer["X-Cache"] == attempt or attempt == "either"
        outputs = {output["name"]: output for output in answer.json()["outputs"]}
        assert outputs["predict"]["datatype"] == v2_datatype(predictions)
        assert outputs["predict"]["shape"] == list(np.shape(predictions))
        assert_same_labels(v2_values(outputs["predict"], predictions), predictions)
        if v2_proba:
            assert outputs["predict_proba"]["datatype"] == "FP64"
            assert_same_probabilities(v2_values(outputs["predict_proba"], probabilities), probabilities)

    names = [c["name"] for c in signature["inputs"]]
    split = {
        "dataframe_split": {"columns": names, "data": [[row[n] for n in names] if isinstance(row, dict) else row for row in rows]}
    }
    for attempt in ("either", "HIT"):  # rows without probabilities share the native request's cache entry
        answer = client.post(zoo_url(name, "invocations"), orjson.dumps(split), content_type="application/json", **headers)
        assert answer.status_code == 200, answer.content
        assert answer["X-Cache"] == attempt or attempt == "either"
        assert_same_labels(answer.json()["predictions"], predictions)


@pytest.mark.parametrize("name", REFUSED)
def test_zoo_model_that_cannot_serve_is_refused_at_upload_naming_why(name, zoo):
    response = zoo.uploads[name]
    assert response.status_code == 422, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert ZOO[name].refused in response.json()["detail"]


def test_multi_output_probabilities_of_different_widths_are_a_v2_400_naming_them(zoo, client):
    body = v2_body(
        {"inputs": [{"name": f"f{i}", "type": "double"} for i in range(4)]}, records_of(numeric_x(), 2), want_proba=True
    )
    answer = client.post(
        "/v2/models/multi-output-logistic-strings/versions/1/infer",
        orjson.dumps(body),
        content_type="application/json",
        HTTP_X_API_KEY=zoo.tenant.api_key,
    )
    assert answer.status_code == 400
    assert "different numbers of classes (2, 3)" in answer.json()["error"]


# ------------------------------------------------------------------------------------ try it


class TryPage(HTMLParser):
    """What the browser's script reads from the "Try it" page: the form's fields and values, and the CSRF token."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self.csrf_token = ""
        self._select: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        column = attributes.get("data-column")
        if tag == "body":
            self.csrf_token = orjson.loads(attributes.get("hx-headers") or "{}").get("X-CSRFToken", "")
        elif tag == "input" and column is not None:
            self.values[column] = attributes.get("value") or ""
            self.kinds[column] = attributes["type"]
        elif tag == "select" and column is not None:
            self._select = column
            self.kinds[column] = "select"
        # A browser shows a select's first option unless another is selected.
        elif tag == "option" and self._select is not None and (self._select not in self.values or "selected" in attributes):
            self.values[self._select] = attributes["value"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def typed_as_the_page_sends(kind: str, raw: str) -> Any:
    """static/js/app.js's value(): empty is null, numbers parsed, booleans from true/false, the rest as typed."""
    if raw == "":
        return None
    if kind in ("double", "float", "long", "integer"):
        try:
            number = float(raw)
        except ValueError:
            return raw
        return int(number) if number.is_integer() else number  # JSON.stringify writes 5.0 as 5
    if kind == "boolean":
        return raw == "true"
    return raw


def as_typed_text(value) -> str:
    """A training value as a person would type it into the form."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


@pytest.mark.parametrize("name", SERVED)
def test_zoo_model_try_page_renders_its_form_and_answers_what_it_submits(name, zoo):
    from django.test import Client

    estimator, x = fitted(name)
    version = zoo.version(name)
    columns = version["signature"]["inputs"]
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(zoo.tenant.user)
    page = browser.get(f"/models/{ZOO_ORG}/{name}/versions/1/try/")
    assert page.status_code == 200
    html = page.content.decode()
    form = TryPage(html)
    assert list(form.values) == [c["name"] for c in columns]
    widgets = {"double": "number", "long": "number", "string": "text", "boolean": "select"}
    assert [form.kinds[c["name"]] for c in columns] == [widgets[c["type"]] for c in columns]
    assert 'id="try-result"' in html
    meaning = {
        "outlier_detection": "-1 for an outlier and 1 for an inlier",
        "clustering": "the id of the cluster the row falls in",
    }
    if version["task"] in meaning:
        assert meaning[version["task"]] in html
    else:
        assert 'id="try-meaning"' not in html

    # The person fills in what the form leaves empty with the first training row, and presses Predict.
    first = records_of(x, 1)[0]
    first = first if isinstance(first, dict) else dict(zip((c["name"] for c in columns), first, strict=True))
    texts = {c["name"]: form.values[c["name"]] or as_typed_text(first[c["name"]]) for c in columns}
    row = [typed_as_the_page_sends(c["type"], texts[c["name"]]) for c in columns]
    body = {"inputs": [row]} | ({"parameters": {"probabilities": True}} if version["has_predict_proba"] else {})
    answer = browser.post(
        zoo_url(name, "predict"), orjson.dumps(body), content_type="application/json", HTTP_X_CSRFTOKEN=form.csrf_token
    )
    assert answer.status_code == 200, answer.content
    assert not getattr(answer, "served_by_dispatcher", False)  # a session's request takes Django's full path

    if isinstance(x, pd.DataFrame):
        sent = pd.DataFrame([[np.nan if v is None else v for v in row]], columns=x.columns).astype(x.dtypes.to_dict())
    else:
        sent = np.array([row], dtype=np.float64)
    assert_same_labels(answer.json()["predictions"], as_json(estimator.predict(sent)))
    if version["has_predict_proba"]:
        assert_same_probabilities(answer.json()["probabilities"], as_json(estimator.predict_proba(sent)))
    if version["task"] == "classification":
        assert answer.json()["classes"] == version["classes"]


# ------------------------------------------------------------------------------------ drift


def feature_kinds(x) -> list[str]:
    """Strings (and categories) are compared as categories, numbers as numbers."""
    if not isinstance(x, pd.DataFrame):
        return ["num"] * x.shape[1]
    return ["num" if getattr(dtype, "kind", "O") in "fi" else "cat" for dtype in x.dtypes]


@pytest.mark.parametrize("name", SERVED)
def test_zoo_model_drift_report_compares_each_feature_and_the_predictions(name, zoo, client):
    estimator, x = fitted(name)
    version = zoo.version(name)
    # An earlier test's record may still wait on this process's Redis connection (it leaves with
    # the next round trip): send and store it now, so the count below is this test's alone.
    settle_pending()
    records.drain_stream()
    answer = client.post(
        zoo_url(name, "predict"),
        orjson.dumps({"inputs": records_of(x, 40)}),
        content_type="application/json",
        HTTP_X_API_KEY=zoo.tenant.api_key,
    )
    assert answer.status_code == 200, answer.content
    settle_pending()  # the record leaves with the connection's next round trip
    assert records.drain_stream() == 1
    api = zoo.tenant.key_client()
    queued = api.post(f"/api/v1/models/{ZOO_ORG}/{name}/drift-reports", {"version": 1, "window_hours": 1}, format="json")
    assert queued.status_code == 202, queued.content
    drift.compute_report(report_id=queued.json()["id"])  # the worker's side
    report = api.get(f"/api/v1/drift-reports/{queued.json()['id']}").json()
    assert (report["status"], report["error"]) == ("done", "")
    assert (report["reference_rows"], report["current_rows"]) == (N_FIT, 40)
    features = {feature["name"]: feature for feature in report["features"]}
    names = [c["name"] for c in version["signature"]["inputs"]]
    assert list(features) == names
    assert [features[n]["type"] for n in names] == feature_kinds(x)
    for feature in features.values():
        assert feature["test"] is not None and feature["statistic"] is not None, feature
        # The window is the first 40 training rows: each of their values is in the reference.
        assert feature["current_rows"] == 40 - int(pd.isna(reference_frame(x)[feature["name"]].iloc[:40]).sum())
    # Labels, -1/1 outliers and cluster ids are categories; only a regressor's prediction is a number.
    prediction = report["prediction"]
    assert prediction.get("note", "") == "", prediction
    kind = "num" if version["task"] == "regression" else "cat"
    shape = np.shape(estimator.predict(x.iloc[:1] if isinstance(x, pd.DataFrame) else x[:1]))
    # A multi-output model's outputs are compared one by one; the report shows the one that moved most.
    outputs = prediction.get("outputs", [prediction]) if len(shape) > 1 else [prediction]
    assert [o["name"] for o in outputs] == ([f"prediction[{i}]" for i in range(shape[1])] if len(shape) > 1 else ["prediction"])
    for output in outputs:
        assert (output["type"], output["reference_rows"], output["current_rows"]) == (kind, N_FIT, 40), output
        assert output["test"] is not None and output["statistic"] is not None, output
    assert prediction["name"] in [o["name"] for o in outputs]


# ------------------------------------------------------------------------------------ batch


def batch_rows(x, rows: int = 1000) -> pd.DataFrame:
    """1 000 rows like the training data: its rows resampled, each number moved by up to a few percent
    (signs kept, so a log or square root still applies); a frame keeps its missing values."""
    rng = np.random.default_rng(7)
    frame = reference_frame(x).iloc[rng.integers(0, len(x), rows)].reset_index(drop=True)
    for column in frame.columns:
        if frame[column].dtype.kind == "f":
            frame[column] = frame[column] * (1 + rng.normal(0, 0.03, rows))
    return frame


def jsonl_of(frame: pd.DataFrame, *, named: bool) -> bytes:
    """JSON lines: objects by column name (null for a missing value) or lists in signature order."""
    values = records_of(frame, len(frame)) if named else frame.to_numpy().tolist()
    return b"".join(orjson.dumps(value) + b"\n" for value in values)


@dataclass
class BatchOutcome:
    job: dict
    result: bytes
    logs: str = ""


@pytest.fixture(scope="module")
def zoo_batch(zoo, django_db_blocker) -> dict[tuple[str, str], BatchOutcome]:
    """Two batch jobs of 1 000 rows per served kind, a CSV one and a JSON lines one (with
    probabilities where the model has them), all on one real Celery worker started once, as
    many at a time as the organization's limit on running jobs allows.

    The worker's broker is the suite's own Redis database (no other is free here); it starts
    and stops inside this fixture, before any test's cache flush would empty the broker.
    """
    import time

    from django.conf import settings

    from inference.batch import selectors as batch_selectors
    from platform_site.tests.workers import WorkerPool, publishing_to

    broker = settings.REDIS_URL
    outcomes: dict[tuple[str, str], BatchOutcome] = {}
    waiting = []
    for name in SERVED:
        if zoo.uploads[name].status_code != 201:
            continue
        x = fitted(name)[1]
        source = batch_rows(x)
        waiting.append(((name, "csv"), source.to_csv(index=False).encode(), "rows.csv", False))
        jsonl = jsonl_of(source, named=isinstance(x, pd.DataFrame))
        version = zoo.version(name)
        probabilities = version["has_predict_proba"] and not isinstance((version["classes"] or [None])[0], list)  # one output
        waiting.append(((name, "jsonl"), jsonl, "rows.jsonl", probabilities))
    with django_db_blocker.unblock():
        at_once = batch_selectors.limits_for(organization=zoo.tenant.organization).max_concurrent_jobs
        pool = WorkerPool(broker=broker, settings_module="inference.tests.batch_worker_settings")
        try:
            pool.ensure("zoo", concurrency=2)
            api = zoo.tenant.key_client()
            running: dict[tuple[str, str], int] = {}
            deadline = time.monotonic() + 300
            while (waiting or running) and time.monotonic() < deadline:
                while waiting and len(running) < at_once:
                    key, content, filename, probabilities = waiting.pop(0)
                    with publishing_to(broker):
                        created = api.post(
                            f"/api/v1/models/{ZOO_ORG}/{key[0]}/batch-jobs",
                            {"file": f.upload_file(content, filename), "version": 1, "probabilities": probabilities},
                            format="multipart",
                        )
                    if created.status_code == 202:
                        running[key] = created.json()["id"]
                    else:
                        outcomes[key] = BatchOutcome(job=created.json(), result=b"")
                time.sleep(0.1)
                for key, job_id in list(running.items()):
                    job = api.get(f"/api/v1/batch-jobs/{job_id}").json()
                    if job["status"] in ("queued", "running"):
                        continue
                    result = api.get(f"/api/v1/batch-jobs/{job_id}/result") if job["status"] == "succeeded" else None
                    content = b"".join(result.streaming_content) if result is not None and result.status_code == 200 else b""
                    outcomes[key] = BatchOutcome(job=job, result=content, logs="" if content else pool.logs())
                    del running[key]
            for key, job_id in running.items():
                outcomes[key] = BatchOutcome(job={"id": job_id, "status": "unfinished"}, result=b"", logs=pool.logs())
            for key, *_ in waiting:
                outcomes[key] = BatchOutcome(job={"status": "not submitted in time"}, result=b"", logs=pool.logs())
        finally:
            pool.stop()
    return outcomes


def result_predictions(outcome: BatchOutcome, fmt: str, outputs: int, width: int) -> tuple[list, list | None]:
    """The result's predictions (a list of outputs per row when there are several) and, from JSON lines,
    its probabilities; `width` is the number of input columns (a list row's prediction follows them)."""
    if fmt == "csv":
        table = pd.read_csv(io.BytesIO(outcome.result), keep_default_na=False)
        if outputs == 1:
            return table["prediction"].tolist(), None
        return [orjson.loads(cell) for cell in table["prediction"]], None  # a JSON array per row
    lines = [orjson.loads(line) for line in outcome.result.splitlines()]
    if lines and isinstance(lines[0], dict):
        predictions = [line["prediction"] for line in lines]
        probabilities = [[value for key, value in line.items() if key.startswith("probability_")] for line in lines]
    else:
        predictions = [line[width] for line in lines]
        probabilities = [line[width + 1 :] for line in lines]
    return predictions, probabilities if any(probabilities) else None


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("name", SERVED)
def test_zoo_batch_job_of_1000_rows_equals_the_estimator(name, fmt, zoo_batch):
    estimator, x = fitted(name)
    outcome = zoo_batch[(name, fmt)]
    assert outcome.job.get("status") == "succeeded", (
        outcome.job.get("error"),
        outcome.job.get("errors"),
        outcome.job,
        outcome.logs,
    )
    assert (outcome.job["rows_total"], outcome.job["rows_failed"]) == (1000, 0)
    source = batch_rows(x)
    model_input = source if isinstance(x, pd.DataFrame) else source.to_numpy()
    want = estimator.predict(model_input)
    outputs = 1 if want.ndim == 1 else want.shape[1]
    got, probabilities = result_predictions(outcome, fmt, outputs, source.shape[1])
    assert len(got) == 1000
    if want.dtype.kind == "f":
        np.testing.assert_allclose(np.array(got, dtype=float), want, rtol=1e-9, atol=1e-12)
    else:
        # CSV labels come back as pandas reads them; JSON lines keep the label's own JSON type.
        assert_same_labels(got, as_json(want))
    if outcome.job["probabilities"]:
        assert probabilities is not None
        assert_same_probabilities(probabilities, as_json(estimator.predict_proba(model_input)))


def test_a_batch_job_asking_a_multi_output_classifier_for_probabilities_is_a_400_naming_why(zoo):
    source = batch_rows(numeric_x(), rows=3)
    refused = zoo.tenant.key_client().post(
        f"/api/v1/models/{ZOO_ORG}/multi-output-logistic-strings/batch-jobs",
        {"file": f.upload_file(source.to_csv(index=False).encode(), "rows.csv"), "version": 1, "probabilities": True},
        format="multipart",
    )
    assert refused.status_code == 400, refused.content
    assert refused.json()["errors"] == [
        {"field": "probabilities", "message": "not available for a multi-output model's batch job"}
    ]
    assert "multi-output classifier" in refused.json()["detail"]


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "path, content_type, error_key",
    [
        pytest.param("/api/v1/models/acme/strict/versions/1/predict", "application/problem+json", "detail", id="native"),
        pytest.param("/v2/models/strict/versions/1/infer", "application/json", "error", id="v2"),
        pytest.param("/api/v1/models/acme/strict/versions/1/invocations", "application/json", "message", id="mlflow"),
    ],
)
def test_a_model_raising_at_predict_is_a_500_in_the_protocols_shape_with_a_request_id_even_under_debug(
    path, content_type, error_key, tenant_a, client, settings
):
    from accounts.principals import Caller
    from registry import services

    settings.DEBUG = True
    frame = customers()
    services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="strict")
    response = upload_frame_model(tenant_a, "strict", strict_onehot_svc().fit(frame, churn(frame)), frame)
    assert response.status_code == 201, response.content
    row = records_of(frame, 1)[0] | {"city": "atlantis"}  # a category the encoder never saw: it raises ValueError
    if path.startswith("/v2"):
        body = v2_body(response.json()["signature"], [row], want_proba=False)
    elif path.endswith("invocations"):
        body = {"dataframe_records": [row]}
    else:
        body = {"inputs": [row]}
    answer = client.post(path, orjson.dumps(body), content_type="application/json", HTTP_X_API_KEY=tenant_a.api_key)
    assert answer.status_code == 500
    assert answer["Content-Type"] == content_type
    request_id = answer["X-Request-Id"]
    assert request_id.startswith("req_")
    assert request_id in answer.json()[error_key]
    assert "atlantis" not in answer.content.decode()  # nothing of the traceback leaks
    if path.endswith("predict"):
        # The model's own error, told apart from the platform's (internal_error).
        assert answer.json()["request_id"] == request_id and answer.json()["code"] == "model_error"
        assert "ValueError" in answer.json()["detail"]
    if path.endswith("invocations"):
        assert answer.json()["error_code"] == "INTERNAL_ERROR"


NATIVE_ROW = {"inputs": [[0.1, 0.2, 0.3, 0.4]]}
V2_ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [0.1, 0.2, 0.3, 0.4]}]}
MLFLOW_ROW = {"dataframe_split": {"columns": ["f0", "f1", "f2", "f3"], "data": [[0.1, 0.2, 0.3, 0.4]]}}


# V2 names a model in the API key's organization, so it takes no session.
@pytest.mark.parametrize(
    "path, body, content_type, error_key, session",
    [
        pytest.param(
            "/api/v1/models/acme/lost/versions/1/predict", NATIVE_ROW, "application/problem+json", "detail", False, id="native"
        ),
        pytest.param(
            "/api/v1/models/acme/lost/versions/1/predict",
            NATIVE_ROW,
            "application/problem+json",
            "detail",
            True,
            id="native-session",
        ),
        pytest.param("/v2/models/lost/versions/1/infer", V2_ROW, "application/json", "error", False, id="v2"),
        pytest.param(
            "/api/v1/models/acme/lost/versions/1/invocations", MLFLOW_ROW, "application/json", "message", False, id="mlflow"
        ),
        pytest.param(
            "/api/v1/models/acme/lost/versions/1/invocations",
            MLFLOW_ROW,
            "application/json",
            "message",
            True,
            id="mlflow-session",
        ),
    ],
)
def test_an_unexpected_failure_of_the_platform_is_a_500_with_a_request_id_never_the_debug_page(
    path, body, content_type, error_key, session, tenant_a, settings
):
    """Under DEBUG (as `make run` sets it), through the fast path and through Django's own (a session's request)."""
    from django.test import Client

    from accounts.principals import Caller
    from registry import services

    settings.DEBUG = True
    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="lost")
    version = f.create_version(
        model, RandomForestClassifier(n_estimators=5, random_state=0).fit(numeric_x(), labels("string-binary"))
    )
    for stored in (version.artifact, version.serving_artifact):  # the model store lost the files: no code path expects it
        stored.storage.delete(stored.name)
    client = Client()
    headers = {"HTTP_X_API_KEY": tenant_a.api_key}
    if session:
        client.force_login(tenant_a.user)
        headers = {}
    answer = client.post(path, orjson.dumps(body), content_type="application/json", **headers)
    assert getattr(answer, "served_by_dispatcher", False) is not session
    assert answer.status_code == 500, answer.content
    assert answer["Content-Type"] == content_type
    request_id = answer["X-Request-Id"]
    assert request_id.startswith("req_")
    assert request_id in answer.json()[error_key]
    text = answer.content.decode()
    assert "Traceback" not in text and "FileNotFoundError" not in text and version.artifact.name not in text
    if path.endswith("predict"):
        assert (answer.json()["code"], answer.json()["request_id"]) == ("internal_error", request_id)


def upload_frame_model(tenant, name: str, estimator, frame: pd.DataFrame, **fields):
    data = {
        "file": f.upload_file(f.joblib_bytes(estimator), "model.joblib"),
        "input_example": orjson.dumps(records_of(frame, 5)).decode(),
        **fields,
    }
    return tenant.jwt_client().post(f"/api/v1/models/acme/{name}/versions", data, format="multipart")


def test_outlier_feedback_is_minus_one_or_one_and_counts_in_accuracy_and_a_clusterer_takes_none(zoo):
    from analytics.services import quality

    client = zoo.tenant.key_client()
    row = {"inputs": records_of(numeric_x(), 1)}
    outlier = client.post(zoo_url("isolation-forest", "predict"), row, format="json").json()
    settle_pending()  # the record leaves with the connection's next round trip
    assert records.drain_stream() == 1
    for body, field, message in [
        ({"label": 0}, "label", "send -1 (an outlier) or 1 (an inlier)"),
        ({"label": True}, "label", "send -1 (an outlier) or 1 (an inlier)"),
        ({"value": 1.0}, "value", "came from an outlier detector: send label"),
    ]:
        refused = client.post(f"/api/v1/predictions/{outlier['id']}/feedback", body, format="json")
        assert refused.status_code == 400, refused.content
        assert refused.json()["errors"][0]["field"] == field
        assert message in refused.json()["detail"]
    truth = client.post(f"/api/v1/predictions/{outlier['id']}/feedback", {"label": outlier["predictions"][0]}, format="json")
    assert truth.status_code == 201, truth.content
    quality.roll_up_quality()
    (day,) = client.get(f"/api/v1/models/{ZOO_ORG}/isolation-forest/quality").json()["days"]
    assert (day["metric"], day["feedback"], day["correct"]) == ("accuracy", 1, 1)

    cluster = client.post(zoo_url("kmeans", "predict"), row, format="json").json()
    settle_pending()
    assert records.drain_stream() == 1
    refused = client.post(f"/api/v1/predictions/{cluster['id']}/feedback", {"label": cluster["predictions"][0]}, format="json")
    assert refused.status_code == 400
    assert "came from a clusterer: its cluster ids have no true value" in refused.json()["detail"]
