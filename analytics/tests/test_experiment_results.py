"""GET /api/v1/experiments/{id}/results against scipy on fixed records and feedback."""

from datetime import timedelta

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, root_mean_squared_error

from accounts.principals import Caller
from analytics.tests import factories as af
from inference.experiments import services as experiment_services
from registry import services as registry_services
from registry.tests import factories as rf

pytestmark = pytest.mark.django_db


def start_experiment(tenant, model, *, weights=(50, 50), metric="accuracy", min_samples=100):
    return experiment_services.create_experiment(
        caller=Caller(user=tenant.user),
        model=model,
        name="ab",
        variants=[{"version": n + 1, "weight": w} for n, w in enumerate(weights)],
        metric=metric,
        min_samples=min_samples,
    )


def served(experiment, version, variant, *, units, anonymous=0, latencies=None, outputs=None):
    at = experiment.created_at + timedelta(seconds=1)
    records = []
    for i in range(units + anonymous):
        records.append(
            af.record(
                version,
                at=at + timedelta(milliseconds=i),
                exp=experiment.id,
                variant=variant,
                unit=f"{variant}-unit-{i}" if i < units else None,
                lat=float(latencies[i]) if latencies is not None else 1.0,
                out=[outputs[i] if outputs is not None else 0],
            )
        )
    return af.ingest(records)


def results(tenant, experiment):
    response = tenant.key_client().get(f"/api/v1/experiments/{experiment.id}/results")
    assert response.status_code == 200, response.content
    return response.json()


def test_accuracy_results_match_scipy(tenant_a):
    model, (v1, v2) = af.iris_model(tenant_a, versions=2)
    experiment = start_experiment(tenant_a, model)
    rng = np.random.default_rng(5)
    latencies = rng.gamma(2.0, 2.0, size=420)
    control = served(experiment, v1, "v1", units=400, anonymous=20, latencies=latencies)
    variant = served(experiment, v2, "v2", units=410, anonymous=10)
    for i, record in enumerate(control[:300]):
        af.feedback(v1, record["id"], label=0 if i < 240 else 1)  # 240 of 300 right
    for i, record in enumerate(variant[:300]):
        af.feedback(v2, record["id"], label=0 if i < 270 else 2)  # 270 of 300 right

    body = results(tenant_a, experiment)

    first, second = body["variants"]
    assert (first["name"], first["is_control"], second["is_control"]) == ("v1", True, False)
    assert (first["requests"], first["units"], first["requests_without_unit"], first["assignments"]) == (420, 400, 20, 420)
    assert (second["requests"], second["units"], second["assignments"]) == (420, 410, 420)
    assert first["latency_ms"]["p50"] == pytest.approx(np.quantile(latencies, 0.5))
    assert first["latency_ms"]["p95"] == pytest.approx(np.quantile(latencies, 0.95))
    assert first["latency_ms"]["mean"] == pytest.approx(latencies.mean())
    assert (first["feedback"], second["feedback"]) == (300, 300)
    wilson = stats.binomtest(270, 300).proportion_ci(0.95, method="wilson")
    assert second["metric"] == {"value": 0.9, "low": pytest.approx(wilson.low), "high": pytest.approx(wilson.high)}
    _, p_value, _, _ = stats.chi2_contingency([[270, 30], [240, 60]], correction=False)
    assert second["difference"]["value"] == pytest.approx(0.1)
    assert second["difference"]["p_value"] == pytest.approx(p_value)
    assert second["difference"]["is_significant"] is True
    assert second["difference"]["low"] > 0
    assert first["difference"] is None
    assert body["leader"] == 2
    expected_srm = stats.chisquare([420, 420], f_exp=[420, 420])
    assert body["sample_ratio"]["p_value"] == pytest.approx(expected_srm.pvalue)
    assert body["sample_ratio"]["is_mismatch"] is False


def test_a_starved_variant_raises_the_sample_ratio_alarm(tenant_a):
    model, (v1, v2) = af.iris_model(tenant_a, versions=2)
    experiment = start_experiment(tenant_a, model)
    served(experiment, v1, "v1", units=600)
    served(experiment, v2, "v2", units=400)
    body = results(tenant_a, experiment)
    expected = stats.chisquare([600, 400], f_exp=[500, 500])
    assert body["sample_ratio"]["statistic"] == pytest.approx(expected.statistic)
    assert body["sample_ratio"]["p_value"] == pytest.approx(expected.pvalue)
    assert body["sample_ratio"]["is_mismatch"] is True
    assert [v["expected_assignments"] for v in body["variants"]] == [500, 500]


@pytest.fixture
def regressors(tenant_a):
    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="reg")
    return model, rf.create_version(model, rf.regression_model(), promote=True), rf.create_version(model, rf.regression_model())


def served_with_truth(experiment, version, variant, *, seed, n, error_scale):
    """`n` predictions of `version` and, as feedback, true values `error_scale` away from them."""
    rng = np.random.default_rng(seed)
    predicted = rng.normal(20.0, 5.0, size=n)
    truth = predicted - rng.normal(0.0, error_scale, size=n)
    for record, value in zip(served(experiment, version, variant, units=n, outputs=predicted.tolist()), truth, strict=True):
        af.feedback(version, record["id"], value=float(value))
    return predicted, truth


@pytest.mark.parametrize("metric", ["mae", "rmse"])
def test_regression_results_are_sklearns_errors_of_the_predictions(tenant_a, regressors, metric):
    model, v1, v2 = regressors
    experiment = start_experiment(tenant_a, model, metric=metric, min_samples=20)
    control_predicted, control_truth = served_with_truth(experiment, v1, "v1", seed=8, n=60, error_scale=2.0)
    predicted, truth = served_with_truth(experiment, v2, "v2", seed=9, n=45, error_scale=0.5)

    body = results(tenant_a, experiment)

    control, variant = body["variants"]
    expected = {"mae": mean_absolute_error(truth, predicted), "rmse": root_mean_squared_error(truth, predicted)}
    expected_control = {
        "mae": mean_absolute_error(control_truth, control_predicted),
        "rmse": root_mean_squared_error(control_truth, control_predicted),
    }
    assert variant["error_metrics"] == {"mae": pytest.approx(expected["mae"]), "rmse": pytest.approx(expected["rmse"])}
    assert control["error_metrics"] == {
        "mae": pytest.approx(expected_control["mae"]),
        "rmse": pytest.approx(expected_control["rmse"]),
    }
    # `errors` stays the count of failed requests beside the error metrics.
    assert variant["errors"] == 0 and control["errors"] == 0
    assert variant["metric"]["value"] == pytest.approx(expected[metric])
    assert variant["metric"]["low"] < expected[metric] < variant["metric"]["high"]
    assert variant["difference"]["value"] == pytest.approx(expected[metric] - expected_control[metric])
    assert variant["difference"]["high"] < 0 and variant["difference"]["is_significant"] is True
    assert (body["is_lower_better"], body["leader"]) == (True, 2)  # the smaller error wins


def test_mae_results_use_welch_on_the_absolute_errors(tenant_a, regressors):
    model, v1, v2 = regressors
    experiment = start_experiment(tenant_a, model, metric="mae", min_samples=20)
    control_predicted, control_truth = served_with_truth(experiment, v1, "v1", seed=3, n=50, error_scale=1.0)
    predicted, truth = served_with_truth(experiment, v2, "v2", seed=4, n=40, error_scale=1.2)

    variant = results(tenant_a, experiment)["variants"][1]

    welch = stats.ttest_ind(np.abs(predicted - truth), np.abs(control_predicted - control_truth), equal_var=False)
    interval = welch.confidence_interval(0.95)
    assert variant["difference"]["p_value"] == pytest.approx(welch.pvalue)
    assert (variant["difference"]["low"], variant["difference"]["high"]) == (
        pytest.approx(interval.low),
        pytest.approx(interval.high),
    )


def test_the_mean_of_the_true_values_is_no_longer_a_metric(tenant_a, regressors):
    model, _, _ = regressors
    response = tenant_a.key_client().post(
        "/api/v1/models/acme/reg/experiments",
        {"name": "ab", "metric": "mean_value", "variants": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "metric"


def test_results_without_traffic_are_empty_not_an_error(tenant_a):
    model, _ = af.iris_model(tenant_a, versions=2)
    experiment = start_experiment(tenant_a, model)
    body = results(tenant_a, experiment)
    assert [v["requests"] for v in body["variants"]] == [0, 0]
    assert body["variants"][1]["difference"]["p_value"] is None
    assert body["sample_ratio"]["p_value"] is None
    assert body["leader"] is None
