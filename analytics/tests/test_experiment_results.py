"""GET /api/v1/experiments/{id}/results against scipy on fixed records and feedback."""
from datetime import timedelta

import numpy as np
import pytest
from scipy import stats

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
                version, at=at + timedelta(milliseconds=i), exp=experiment.id, variant=variant,
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


def test_mean_value_results_use_welch(tenant_a):
    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="reg")
    v1 = rf.create_version(model, rf.regression_model(), promote=True)
    v2 = rf.create_version(model, rf.regression_model())
    experiment = start_experiment(tenant_a, model, metric="mean_value", min_samples=20)
    rng = np.random.default_rng(8)
    control_values, variant_values = rng.normal(3.0, 1.0, size=60), rng.normal(3.6, 2.0, size=45)
    for record, value in zip(served(experiment, v1, "v1", units=60, outputs=[1.5] * 60), control_values):
        af.feedback(v1, record["id"], value=float(value))
    for record, value in zip(served(experiment, v2, "v2", units=45, outputs=[1.5] * 45), variant_values):
        af.feedback(v2, record["id"], value=float(value))

    body = results(tenant_a, experiment)

    control, variant = body["variants"]
    welch = stats.ttest_ind(variant_values, control_values, equal_var=False)
    interval = welch.confidence_interval(0.95)
    assert variant["metric"]["value"] == pytest.approx(variant_values.mean())
    t_low, t_high = stats.t.interval(0.95, df=44, loc=variant_values.mean(), scale=stats.sem(variant_values))
    assert (variant["metric"]["low"], variant["metric"]["high"]) == (pytest.approx(t_low), pytest.approx(t_high))
    assert variant["difference"]["p_value"] == pytest.approx(welch.pvalue)
    assert (variant["difference"]["low"], variant["difference"]["high"]) == (pytest.approx(interval.low), pytest.approx(interval.high))
    assert control["has_enough_samples"] is True


def test_results_without_traffic_are_empty_not_an_error(tenant_a):
    model, _ = af.iris_model(tenant_a, versions=2)
    experiment = start_experiment(tenant_a, model)
    body = results(tenant_a, experiment)
    assert [v["requests"] for v in body["variants"]] == [0, 0]
    assert body["variants"][1]["difference"]["p_value"] is None
    assert body["sample_ratio"]["p_value"] is None
    assert body["leader"] is None
