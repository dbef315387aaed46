"""The compiled form of tree ensembles (registry.loaders.compiled): exact, or not served.

No database: these build models, convert and verify them, and compare with scikit-learn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification, make_regression
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
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from registry.loaders import compiled

X_CLASS, Y_CLASS = make_classification(n_samples=300, n_features=6, n_informative=4, n_classes=3, random_state=0)
Y_BINARY = (Y_CLASS > 0).astype(int)
X_REG, Y_REG = make_regression(n_samples=300, n_features=6, noise=5.0, random_state=0)
LABELS = np.array(["setosa", "versicolor", "virginica"])[Y_CLASS]  # string labels stay strings

SUPPORTED = {
    "decision_tree_classifier": lambda: DecisionTreeClassifier(random_state=0).fit(X_CLASS, LABELS),
    "decision_tree_regressor": lambda: DecisionTreeRegressor(max_depth=8, random_state=0).fit(X_REG, Y_REG),
    "random_forest_classifier": lambda: RandomForestClassifier(n_estimators=15, random_state=0).fit(X_CLASS, LABELS),
    "random_forest_binary": lambda: RandomForestClassifier(n_estimators=15, random_state=0).fit(X_CLASS, Y_BINARY),
    "random_forest_regressor": lambda: RandomForestRegressor(n_estimators=10, random_state=0).fit(X_REG, Y_REG),
    "extra_trees_classifier": lambda: ExtraTreesClassifier(n_estimators=10, random_state=0).fit(X_CLASS, Y_CLASS),
    "extra_trees_regressor": lambda: ExtraTreesRegressor(n_estimators=10, random_state=0).fit(X_REG, Y_REG),
    "gradient_boosting_binary": lambda: GradientBoostingClassifier(n_estimators=20, random_state=0).fit(X_CLASS, Y_BINARY),
    "gradient_boosting_multiclass": lambda: GradientBoostingClassifier(n_estimators=10, random_state=0).fit(X_CLASS, LABELS),
    "gradient_boosting_regressor": lambda: GradientBoostingRegressor(n_estimators=20, random_state=0).fit(X_REG, Y_REG),
    "gradient_boosting_huber": lambda: GradientBoostingRegressor(loss="huber", n_estimators=10, random_state=0).fit(X_REG, Y_REG),
    "hist_gradient_boosting_binary": lambda: HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(X_CLASS, Y_BINARY),
    "hist_gradient_boosting_multiclass": lambda: HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(X_CLASS, LABELS),
    "hist_gradient_boosting_regressor": lambda: HistGradientBoostingRegressor(max_iter=15, random_state=0).fit(X_REG, Y_REG),
    "hist_gradient_boosting_poisson": lambda: HistGradientBoostingRegressor(loss="poisson", max_iter=10, random_state=0).fit(
        X_REG, np.abs(Y_REG)
    ),
    "pipeline_scaler_forest": lambda: make_pipeline(
        StandardScaler(), RandomForestClassifier(n_estimators=10, random_state=0)
    ).fit(X_CLASS, LABELS),
    "pipeline_imputer_minmax_boosting": lambda: make_pipeline(
        SimpleImputer(), MinMaxScaler(), GradientBoostingRegressor(n_estimators=10, random_state=0)
    ).fit(X_REG, Y_REG),
    "forest_on_a_dataframe": lambda: RandomForestClassifier(n_estimators=10, random_state=0).fit(
        pd.DataFrame(X_CLASS, columns=[f"f{i}" for i in range(6)]), Y_CLASS
    ),
}


def fresh_rows(estimator, n: int = 200):
    rows = np.random.default_rng(1).normal(size=(n, 6)) * 2.0
    names = getattr(estimator, "feature_names_in_", None)
    return pd.DataFrame(rows, columns=list(names)) if names is not None else rows


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.fixture(scope="module", params=sorted(SUPPORTED))
def converted(request):
    estimator = SUPPORTED[request.param]()
    return estimator, compiled.compile_estimator(estimator, examples=None)


def test_each_supported_kind_converts_and_passes_its_verification_bitwise(converted):
    estimator, result = converted
    assert result.artifact is not None, result.reason
    assert result.reason.startswith("verified bitwise against scikit-learn on ")
    figures = result.figures
    assert figures["passed"] is True
    assert figures["label_disagreements"] == 0
    assert figures["max_abs_diff"] == 0.0 and figures["max_rel_diff"] == 0.0
    assert figures["tolerance"] == 0.0 and figures["matches_estimator"] is True
    assert figures["rows_compared"] > 100


def test_the_compiled_form_answers_like_scikit_learn_in_values_types_and_shapes(converted):
    estimator, result = converted
    predictor = compiled.CompiledPredictor(data=result.artifact, estimator=estimator)
    x = fresh_rows(estimator)
    has_proba = hasattr(estimator, "predict_proba")
    predictions, probabilities = predictor.predict(x, want_proba=has_proba)
    assert_same(predictions, np.asarray(estimator.predict(x)))
    if has_proba:
        assert_same(probabilities, estimator.predict_proba(x))
    one, _ = predictor.predict(x[:1] if not hasattr(x, "iloc") else x.iloc[:1], want_proba=False)
    assert_same(one, np.asarray(estimator.predict(x[:1] if not hasattr(x, "iloc") else x.iloc[:1])))


def test_rows_exactly_at_each_threshold_and_one_step_either_side_get_scikit_learns_answer():
    tree = DecisionTreeClassifier(random_state=0).fit(X_CLASS, Y_CLASS)
    predictor = compiled.CompiledPredictor(data=compiled.onnx_bytes(compiled.plan_for(tree)), estimator=tree)
    splits = tree.tree_.feature >= 0
    rows = []
    for feature, threshold in zip(tree.tree_.feature[splits], tree.tree_.threshold[splits], strict=True):
        as32 = np.float32(threshold)
        for value in (
            threshold,
            np.nextafter(threshold, -np.inf),
            np.nextafter(threshold, np.inf),
            as32,
            np.nextafter(as32, np.float32(np.inf)),
        ):
            row = X_CLASS[0].copy()
            row[feature] = value
            rows.append(row)
    x = np.array(rows)
    predictions, probabilities = predictor.predict(x, want_proba=True)
    assert_same(predictions, tree.predict(x))
    assert_same(probabilities, tree.predict_proba(x))


def test_thresholds_cast_to_float32_are_refused_and_the_model_stays_on_scikit_learn(monkeypatch):
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(X_CLASS, Y_CLASS)
    convert = compiled._sklearn_tree

    def float32_thresholds(tree, weights, targets):
        converted = convert(tree, weights, targets)
        converted.threshold = converted.threshold.astype(np.float32).astype(np.float64)
        return converted

    monkeypatch.setattr(compiled, "_sklearn_tree", float32_thresholds)
    result = compiled.compile_estimator(forest)
    assert result.artifact is None
    assert result.reason.startswith("verification failed on ")
    assert result.figures["passed"] is False
    assert result.figures["label_disagreements"] > 0 or result.figures["max_abs_diff"] > 0


def test_a_tampered_tree_is_refused(monkeypatch):
    forest = RandomForestRegressor(n_estimators=10, random_state=0).fit(X_REG, Y_REG)
    plan_for = compiled.plan_for

    def tampered(estimator):
        plan = plan_for(estimator)
        tree = plan.trees[7]
        leaf = int(np.flatnonzero(tree.left == -1)[3])
        tree.weights = tree.weights.copy()
        tree.weights[leaf] = np.nextafter(tree.weights[leaf], np.inf)  # one leaf of one tree, one ulp
        return plan

    monkeypatch.setattr(compiled, "plan_for", tampered)
    data = compiled.onnx_bytes(compiled.plan_for(forest))
    monkeypatch.setattr(compiled, "plan_for", plan_for)
    figures = compiled.verify_compiled(estimator=forest, data=data, examples=X_REG[:20])
    assert figures["passed"] is False
    assert figures["matches_estimator"] is False  # one ulp of one leaf rows may not reach
    assert (
        compiled.failure_reason(figures)
        == "verification failed: the compiled bytes are not the conversion of the estimator's trees"
    )


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        pytest.param(
            lambda: LogisticRegression().fit(X_CLASS, Y_CLASS), "LogisticRegression is not a tree ensemble", id="linear"
        ),
        pytest.param(
            lambda: GradientBoostingClassifier(loss="exponential", n_estimators=5).fit(X_CLASS, Y_BINARY),
            "loss='exponential'",
            id="exponential-loss",
        ),
        pytest.param(
            lambda: HistGradientBoostingClassifier(max_iter=5, categorical_features=[0]).fit(
                np.abs(X_CLASS).astype(int), Y_CLASS
            ),
            "categorical features",
            id="categorical",
        ),
        pytest.param(
            lambda: make_pipeline(PCA(2), RandomForestClassifier(n_estimators=5)).fit(X_CLASS, Y_CLASS), "PCA", id="pca-step"
        ),
        pytest.param(
            lambda: RandomForestRegressor(n_estimators=5).fit(X_REG, np.c_[Y_REG, Y_REG]), "with 2 outputs", id="multi-output"
        ),
        pytest.param(
            lambda: make_pipeline(MinMaxScaler(clip=True), DecisionTreeRegressor()).fit(X_REG, Y_REG),
            "clip=True",
            id="clipping-scaler",
        ),
    ],
)
def test_a_model_without_an_exact_compiled_form_stays_on_scikit_learn_with_the_reason(build, reason):
    result = compiled.compile_estimator(build())
    assert result.artifact is None
    assert reason in result.reason


@pytest.mark.parametrize(
    "row",
    [
        pytest.param([np.nan, 0, 0, 0, 0, 0], id="missing"),
        pytest.param([np.inf, 0, 0, 0, 0, 0], id="infinite"),
        pytest.param([1e39, 0, 0, 0, 0, 0], id="past-float32"),
    ],
)
def test_rows_the_compiled_form_does_not_take_are_left_to_scikit_learn(row):
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X_CLASS, Y_CLASS)
    predictor = compiled.CompiledPredictor(data=compiled.onnx_bytes(compiled.plan_for(forest)), estimator=forest)
    assert predictor.predict(np.array([row], dtype=np.float64), want_proba=True) is None
    assert predictor.predict(np.array([[0.0] * 6]), want_proba=True) is not None


def test_a_dataframe_in_another_column_order_is_left_to_scikit_learn():
    columns = [f"f{i}" for i in range(6)]
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(pd.DataFrame(X_CLASS, columns=columns), Y_CLASS)
    predictor = compiled.CompiledPredictor(data=compiled.onnx_bytes(compiled.plan_for(forest)), estimator=forest)
    frame = pd.DataFrame(X_CLASS[:3], columns=columns)
    assert predictor.predict(frame, want_proba=False) is not None
    assert predictor.predict(frame[columns[::-1]], want_proba=False) is None
    assert predictor.predict(X_CLASS[:3], want_proba=False) is None  # a bare array for a model fitted on names


def test_compiled_module_imports_without_django():
    import subprocess
    import sys

    code = "import sys; import registry.loaders.compiled; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(compiled.__file__).rsplit("/registry/", 1)[0])
