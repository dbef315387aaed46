"""What a loaded model is, serves and expects; fitted classifiers, regressors, outlier detectors and clusterers pass."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.cluster import DBSCAN, KMeans
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multioutput import MultiOutputClassifier
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from platform_site.errors import InvalidArtifact
from registry.loaders.describe import describe_estimator

RNG = np.random.RandomState(5)
X = RNG.rand(40, 3)
FRAME = pd.DataFrame(X, columns=["height", "weight", "age"])


def test_classifier_on_a_dataframe_with_string_classes() -> None:
    model = LogisticRegression().fit(FRAME, np.where(X[:, 0] > 0.5, "tall", "short"))
    described = describe_estimator(estimator=model, saved_sklearn_version="1.8.0").as_dict()
    assert described == {
        "estimator_class": "sklearn.linear_model._logistic.LogisticRegression",
        "final_estimator_class": "sklearn.linear_model._logistic.LogisticRegression",
        "task": "classification",
        "classes": ["short", "tall"],
        "n_features": 3,
        "feature_names": ["height", "weight", "age"],
        "has_predict_proba": True,
        "saved_sklearn_version": "1.8.0",
        "running_sklearn_version": sklearn.__version__,
    }
    json.dumps(described)  # JSON-safe as it stands


def test_pipeline_regressor_is_described_by_its_final_step() -> None:
    model = Pipeline([("scale", StandardScaler()), ("ridge", Ridge())]).fit(X, X @ np.array([1.0, 2.0, 3.0]))
    described = describe_estimator(estimator=model)
    assert (described.estimator_class, described.final_estimator_class, described.task) == (
        "sklearn.pipeline.Pipeline",
        "sklearn.linear_model._ridge.Ridge",
        "regression",
    )
    assert (described.classes, described.n_features, described.feature_names, described.has_predict_proba) == (
        None,
        3,
        None,
        False,
    )
    assert described.saved_sklearn_version is None


def test_numpy_integer_classes_become_plain_ints() -> None:
    model = DecisionTreeClassifier().fit(X, np.array([3, 7] * 20, dtype=np.int64))
    classes = describe_estimator(estimator=model).classes
    assert classes == [3, 7]
    assert [type(value) for value in classes] == [int, int]


def test_multi_output_classes_are_one_list_per_output() -> None:
    targets = np.column_stack([np.array([0, 1] * 20), np.array(["a", "b", "c", "d"] * 10)])
    model = DecisionTreeClassifier().fit(X, targets)
    assert describe_estimator(estimator=model).classes == [["0", "1"], ["a", "b", "c", "d"]]


@pytest.mark.parametrize(("probability", "expected"), [(False, False), (True, True)])
def test_has_predict_proba_follows_the_model(probability: bool, expected: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # SVC(probability=...) is deprecated in 1.9
        model = SVC(probability=probability).fit(X, np.array([0, 1] * 20))
    assert describe_estimator(estimator=model).has_predict_proba is expected


@pytest.mark.parametrize(
    ("estimator", "detail"),
    [
        pytest.param(
            DBSCAN().fit(X),
            "sklearn.cluster._dbscan.DBSCAN has no predict for new rows (it only labels the rows it was fitted on), "
            "so it cannot be served.",
            id="clusterer_without_predict",
        ),
        pytest.param(
            LocalOutlierFactor(n_neighbors=5).fit(X),
            "sklearn.neighbors._lof.LocalOutlierFactor was fitted with novelty=False, so it has no predict for new rows; "
            "fit it with LocalOutlierFactor(novelty=True) to serve it.",
            id="local_outlier_factor_without_novelty",
        ),
        pytest.param(
            Pipeline([("scale", StandardScaler()), ("lof", LocalOutlierFactor(n_neighbors=5))]).fit(X),
            "sklearn.neighbors._lof.LocalOutlierFactor was fitted with novelty=False, so it has no predict for new rows; "
            "fit it with LocalOutlierFactor(novelty=True) to serve it.",
            id="pipeline_ending_in_local_outlier_factor_without_novelty",
        ),
        pytest.param(
            Pipeline([("scale", StandardScaler().fit(X))]),
            "Only classifiers, regressors, outlier detectors and clusterers can be served; the model's final step is "
            "sklearn.preprocessing._data.StandardScaler.",
            id="transformer_pipeline",
        ),
        pytest.param(
            Pipeline([("scale", StandardScaler()), ("end", "passthrough")]),
            "The pipeline ends with 'passthrough', so it predicts nothing.",
            id="passthrough",
        ),
        pytest.param({"weights": [1, 2]}, "The file holds a builtins.dict, not a scikit-learn estimator.", id="dict"),
        pytest.param(
            LogisticRegression(),
            "The model is not fitted: This LogisticRegression instance is not fitted yet. Call 'fit' with appropriate "
            "arguments before using this estimator.",
            id="not_fitted",
        ),
    ],
)
def test_models_that_cannot_serve_are_refused(estimator: object, detail: str) -> None:
    with pytest.raises(InvalidArtifact) as raised:
        describe_estimator(estimator=estimator)
    assert raised.value.detail == detail


def test_meta_estimator_classifier_is_described() -> None:
    targets = np.column_stack([np.array([0, 1] * 20), np.array([1, 0] * 20)])
    model = MultiOutputClassifier(LogisticRegression()).fit(X, targets)
    described = describe_estimator(estimator=model)
    assert (described.task, described.classes) == ("classification", [[0, 1], [0, 1]])


@pytest.mark.parametrize(
    ("estimator", "task"),
    [
        pytest.param(IsolationForest(n_estimators=5, random_state=0), "outlier_detection", id="isolation_forest"),
        pytest.param(LocalOutlierFactor(n_neighbors=5, novelty=True), "outlier_detection", id="local_outlier_factor_novelty"),
        pytest.param(KMeans(n_clusters=2, n_init=1, random_state=0), "clustering", id="kmeans"),
        pytest.param(
            Pipeline([("scale", StandardScaler()), ("kmeans", KMeans(n_clusters=2, n_init=1))]),
            "clustering",
            id="kmeans_pipeline",
        ),
    ],
)
def test_outlier_detectors_and_clusterers_with_predict_are_described_without_classes(estimator, task: str) -> None:
    described = describe_estimator(estimator=estimator.fit(X))
    assert (described.task, described.classes, described.has_predict_proba, described.n_features) == (task, None, False, 3)
