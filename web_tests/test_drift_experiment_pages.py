"""A model's drift and experiment pages through Django's test client, on real reports and
experiments made by the services from ingested prediction records and feedback."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from scipy import stats

from accounts.principals import Caller
from analytics.models import DriftReport
from analytics.services import drift as drift_services
from analytics.tests import factories as af
from inference.experiments import services as experiment_services
from inference.models import Experiment
from registry.models import Release
from registry.tests.factories import iris_data
from web_tests.conftest import signed_in
from web_tests.test_pages import error_next_to, without_csrf

pytestmark = pytest.mark.django_db


def serve(version, rows, *, at, **fields) -> list[dict]:
    return af.ingest(
        [
            af.record(version, at=at + timedelta(seconds=i), **{"in": [list(map(float, row))]}, **fields)
            for i, row in enumerate(rows)
        ]
    )


def served_with_drift(version) -> None:
    """Reference: the version's first days (iris rows, three days ago); window: the last hour,
    with sepal length shifted by +3 and the other features unchanged."""
    x, _ = iris_data()
    now = timezone.now()
    serve(version, x, at=now - timedelta(days=3))
    shifted = x[::3].copy()
    shifted[:, 0] += 3.0
    serve(version, shifted, at=now - timedelta(minutes=50))


@pytest.fixture
def report(tenant_a, iris) -> DriftReport:
    version = iris.versions.get(number=1)
    served_with_drift(version)
    queued = drift_services.request_report(
        caller=Caller(user=tenant_a.user), model=iris, version_number=1, window_hours=2, trigger=DriftReport.Trigger.API
    )
    return drift_services.compute_report(report_id=queued.id)  # the worker's side


# ---------------------------------------------------------------------------- drift


def test_drift_list_shows_each_report_with_its_verdict(owner_client, report):
    page = owner_client.get("/models/acme/iris/drift/")
    assert page.status_code == 200
    row = re.search(rf'<tr id="report-{report.id}">(.*?)</tr>', page.content.decode(), re.S).group(1)
    assert f'href="/models/acme/iris/drift/{report.id}/"' in row
    assert "v1" in row and "50 <small" in row and "vs 150 reference" in row
    assert "1 of 4" in row and "No drift" in row  # one drifted feature of four is under the 50% share
    assert 'aria-current="page">Drift</a>' in page.content.decode()
    assert b"Run now" in page.content


def test_drift_report_page_shows_per_feature_bars_and_histograms(owner_client, report):
    page = owner_client.get(f"/models/acme/iris/drift/{report.id}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "1 of 4 features drifted (25.0%; the threshold is 50.0%)" in text
    first = re.search(r'<tr id="feature-0" class="drifted">(.*?)</tr>', text, re.S).group(1)
    assert "<code>f0</code>" in first and "Kolmogorov–Smirnov" in first and "⚠ Drifted" in first
    expected_p = stats.ks_2samp(iris_data()[0][:, 0], iris_data()[0][::3, 0] + 3.0).pvalue
    assert f"{report.features[0]['p_value']:.4f}" == f"{expected_p:.4f}"
    for j in (1, 2, 3):
        assert f'<tr id="feature-{j}">' in text  # not drifted: no marker
    # The PSI bars: one per feature, the drifted one hatched and labelled in words.
    psi_chart = re.search(r'<svg[^>]*aria-label="PSI per feature".*?</svg>', text, re.S).group(0)
    assert psi_chart.count("<rect") == 1 + 4  # the hatch pattern's rect and four bars
    assert "drifted</text>" in psi_chart and 'fill="url(#hatch)"' in psi_chart
    assert "<desc>1 of 4 features drifted by their test: f0." in psi_chart
    # A histogram per feature: a reference and a current bar per bin (the reference's deciles,
    # ties merged), and the same numbers as a table.
    assert len(report.features[0]["histogram"]["reference"]) == 10
    for j, feature in enumerate(report.features):
        bins = len(feature["histogram"]["reference"])
        figure = re.search(rf'<figure class="chart card" id="histogram-{j}">(.*?)</figure>', text, re.S).group(1)
        assert figure.count('height="12"') == 2 * bins + 2  # the bars and the legend's two swatches
        assert figure.count('<tr><th scope="row">') == bins
    shares = report.features[0]["histogram"]["current"]
    assert f"{shares[-1] * 100:.1f}%" in text  # the shifted rows pile into the top bin
    assert "The model's outputs: two-proportion z test, stable" in text


@pytest.mark.parametrize(
    "data, field, message",
    [
        pytest.param({"version": "1", "window_hours": "0"}, "window_hours", "greater than or equal to 1", id="zero-window"),
        pytest.param({"version": "1", "window_hours": "abc"}, "window_hours", "Enter a whole number", id="not-a-number"),
        pytest.param({"version": "9", "window_hours": "2"}, "version", "Select a valid choice", id="no-such-version"),
        pytest.param(
            {"version": "", "window_hours": "2"}, "version", "required when no version is in production", id="no-production"
        ),
        pytest.param({"version": "2", "window_hours": "2"}, "window_hours", "no traffic in the window", id="no-traffic"),
    ],
)
def test_run_now_shows_errors_next_to_fields(owner_client, iris, data, field, message):
    response = owner_client.post("/models/acme/iris/drift/", data)
    assert response.status_code == 400
    assert message in error_next_to(response, field)
    assert not DriftReport.objects.exists()


def test_run_now_queues_a_report_and_its_page_shows_it_pending_until_the_worker_is_done(owner_client, tenant_a, iris):
    served_with_drift(iris.versions.get(number=1))
    response = owner_client.post("/models/acme/iris/drift/", {"version": "1", "window_hours": "2"})
    report = DriftReport.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/models/acme/iris/drift/{report.id}/"
    assert (report.version.number, report.trigger, report.created_by, report.status, report.current_rows) == (
        1,
        "api",
        tenant_a.user,
        "pending",
        None,
    )
    assert report.window_end - report.window_start == timedelta(hours=2)

    pending = owner_client.get(response["Location"]).content.decode()
    assert "<strong>Pending:</strong> the worker is comparing" in pending
    assert f'hx-get="/models/acme/iris/drift/{report.id}/" hx-trigger="every 2s"' in pending
    listed = owner_client.get("/models/acme/iris/drift/").content.decode()
    row = re.search(rf'<tr id="report-{report.id}">(.*?)</tr>', listed, re.S).group(1)
    assert '<span class="badge muted">Pending</span>' in row and "Drift" not in row.replace("drift/", "")
    again = owner_client.post("/models/acme/iris/drift/", {"version": "1", "window_hours": "3"})
    assert again.status_code == 409 and f"Drift report {report.id} of acme/iris is still pending" in again.content.decode()

    drift_services.compute_report(report_id=report.id)

    done = owner_client.get(response["Location"]).content.decode()
    assert "1 of 4 features drifted (25.0%; the threshold is 50.0%)" in done and "hx-trigger" not in done


def test_a_failed_report_says_why_on_both_pages(owner_client, tenant_a, iris):
    from inference.models import PredictionRecord

    served_with_drift(iris.versions.get(number=1))
    owner_client.post("/models/acme/iris/drift/", {"version": "1", "window_hours": "2"})
    report = DriftReport.objects.get()
    PredictionRecord.objects.all().delete()  # pruned before the worker got to it
    drift_services.compute_report(report_id=report.id)

    page = owner_client.get(f"/models/acme/iris/drift/{report.id}/").content.decode()
    assert "<strong>Failed:</strong> Version 1 of acme/iris served no recorded predictions" in html.unescape(page)
    listed = owner_client.get("/models/acme/iris/drift/").content.decode()
    assert '<span class="badge warn">Failed</span>' in listed


def test_viewer_reads_drift_reports_but_cannot_run_one(viewer_client, report):
    page = viewer_client.get("/models/acme/iris/drift/")
    assert page.status_code == 200 and f"report-{report.id}".encode() in page.content and b"Run now" not in page.content
    assert viewer_client.get(f"/models/acme/iris/drift/{report.id}/").status_code == 200
    assert viewer_client.post("/models/acme/iris/drift/", {"version": "1", "window_hours": "2"}).status_code == 403
    assert DriftReport.objects.count() == 1


# ---------------------------------------------------------------------------- experiments


def start(tenant, model, *, weights=(50, 50), min_samples=20) -> Experiment:
    return experiment_services.create_experiment(
        caller=Caller(user=tenant.user),
        model=model,
        name="v2 vs v1",
        variants=[{"version": n + 1, "weight": w} for n, w in enumerate(weights)],
        min_samples=min_samples,
    )


def served_in(experiment, version, variant: str, *, units: int, right: int, feedback: int) -> None:
    """`units` requests of one unit each; feedback for the first `feedback`, `right` of them correct (label 0)."""
    at = experiment.created_at + timedelta(seconds=1)
    records = af.ingest(
        [
            af.record(
                version,
                at=at + timedelta(milliseconds=i),
                exp=experiment.id,
                variant=variant,
                unit=f"{variant}-{i}",
                lat=2.0 + i % 3,
            )
            for i in range(units)
        ]
    )
    for i, record in enumerate(records[:feedback]):
        af.feedback(version, record["id"], label=0 if i < right else 1)


@pytest.fixture
def experiment(tenant_a, iris) -> Experiment:
    experiment = start(tenant_a, iris)
    v1, v2 = iris.versions.get(number=1), iris.versions.get(number=2)
    served_in(experiment, v1, "v1", units=60, right=30, feedback=50)  # 60% right
    served_in(experiment, v2, "v2", units=60, right=46, feedback=50)  # 92% right
    return experiment


def test_experiment_list_shows_experiments_and_the_running_one(owner_client, experiment):
    page = owner_client.get("/models/acme/iris/experiments/")
    assert page.status_code == 200
    text = page.content.decode()
    row = re.search(rf'<tr id="experiment-{experiment.id}">(.*?)</tr>', text, re.S).group(1)
    assert "v2 vs v1" in row and "Running" in row and "v1 50% (control), v2 50%" in row
    assert "is running; stop it or promote" in text and 'id="experiment-form"' not in text


def test_experiment_page_shows_results_with_intervals_and_difference(owner_client, experiment):
    page = owner_client.get(f"/models/acme/iris/experiments/{experiment.id}/")
    assert page.status_code == 200
    text = html.unescape(page.content.decode())
    control = re.search(r'<tr id="variant-1">(.*?)</tr>', text, re.S).group(1)
    challenger = re.search(r'<tr id="variant-2">(.*?)</tr>', text, re.S).group(1)
    low, high = stats.binomtest(46, 50).proportion_ci(0.95, method="wilson")
    assert "v1 (control)" in control and "60.0%" in control and ">60<" in control.replace(" ", "")
    assert "92.0%" in challenger and f"{low * 100:.1f}% to {high * 100:.1f}%" in challenger
    assert "+32.0%" in challenger and "significant" in challenger and "Leader" in challenger
    _, p_value, _, _ = stats.chi2_contingency([[46, 4], [30, 20]], correction=False)
    assert f"{p_value:.3g}" in challenger
    assert "3.0 / 4.0 ms" in control  # p50 / p95 of 2, 3, 4 ms latencies, 20 of each
    assert "v2 leads significantly" in text and 'id="srm-alarm"' not in text
    chart = re.search(r'<svg[^>]*aria-label="Accuracy per variant, with its 95% interval".*?</svg>', text, re.S).group(0)
    assert chart.count('height="14"') == 2 and chart.count('stroke-width="2"') == 2 * 3  # two bars, two whiskers with caps
    assert "<desc>v1 (control): 60.0% (" in chart
    assert text.count("Promote this variant<span") == 2 and "Stop experiment" in text


def test_a_regression_experiment_page_shows_mae_and_rmse_and_the_smaller_error_leads(owner_client, tenant_a):
    from registry import services as registry_services
    from registry.tests import factories as rf

    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="reg")
    v1 = rf.create_version(model, rf.regression_model(), promote=True)
    v2 = rf.create_version(model, rf.regression_model())
    experiment = experiment_services.create_experiment(
        caller=Caller(user=tenant_a.user),
        model=model,
        name="v2 vs v1",
        metric="rmse",
        min_samples=20,
        variants=[{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
    )
    at = experiment.created_at + timedelta(seconds=1)
    for version, variant, misses in (
        (v1, "v1", (2.0, -2.0)),
        (v2, "v2", (0.5, -0.5)),
    ):  # errors of +-2 (RMSE 2), +-0.5 (RMSE 0.5)
        records = af.ingest(
            [
                af.record(version, at=at + timedelta(milliseconds=i), exp=experiment.id, variant=variant, out=[10.0])
                for i in range(40)
            ]
        )
        for i, record in enumerate(records):
            af.feedback(version, record["id"], value=10.0 - misses[i % 2])

    text = html.unescape(owner_client.get(f"/models/acme/reg/experiments/{experiment.id}/").content.decode())

    assert '<dd>Root mean squared error <small class="help">(lower is better)</small></dd>' in text
    control = re.search(r'<tr id="variant-1">(.*?)</tr>', text, re.S).group(1)
    challenger = re.search(r'<tr id="variant-2">(.*?)</tr>', text, re.S).group(1)
    assert "<td>2 / 2</td>" in control and "<td>0.5 / 0.5</td>" in challenger  # MAE / RMSE
    assert "-1.5" in challenger and "Leader" in challenger
    assert "v2 leads significantly" in text


def test_starved_variant_raises_the_sample_ratio_alarm(owner_client, tenant_a, iris):
    experiment = start(tenant_a, iris)
    served_in(experiment, iris.versions.get(number=1), "v1", units=300, right=0, feedback=0)
    served_in(experiment, iris.versions.get(number=2), "v2", units=150, right=0, feedback=0)
    text = owner_client.get(f"/models/acme/iris/experiments/{experiment.id}/").content.decode()
    assert 'id="srm-alarm"' in text and "Sample ratio mismatch" in text
    assert "no feedback yet" in text  # the chart says so instead of drawing a bar


def test_start_experiment_through_the_form(owner_client, iris):
    page = owner_client.get("/models/acme/iris/experiments/")
    assert 'id="id_variant_0_version"' in page.content.decode() and b"Variant 1 (control)" in page.content
    data = {
        "name": "bigger C",
        "metric": "accuracy",
        "variant_0_version": "2",
        "variant_0_weight": "70",
        "variant_1_version": "1",
        "variant_1_weight": "30",
    }
    response = owner_client.post("/models/acme/iris/experiments/", data)
    experiment = Experiment.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/models/acme/iris/experiments/{experiment.id}/"
    assert [(v["version"], v["weight"]) for v in experiment.variants] == [(2, 70), (1, 30)]
    assert (experiment.name, experiment.metric, experiment.min_samples) == ("bigger C", "accuracy", 100)


VALID = {
    "name": "ab",
    "metric": "accuracy",
    "variant_0_version": "1",
    "variant_0_weight": "50",
    "variant_1_version": "2",
    "variant_1_weight": "50",
}


@pytest.mark.parametrize(
    "changes, field, message",
    [
        pytest.param({"name": ""}, "name", "required", id="no-name"),
        pytest.param({"variant_1_version": "1"}, "variant_1_version", "version 1 appears twice", id="same-version-twice"),
        pytest.param({"variant_1_weight": "100"}, "variant_1_weight", "less than or equal to 99", id="weight-too-big"),
        pytest.param({"variant_1_version": ""}, "variant_1_version", "required", id="no-second-version"),
        pytest.param({"variant_1_weight": ""}, "variant_1_weight", "required", id="no-second-weight"),
        pytest.param({"metric": "rmse"}, "metric", "rmse needs a regression model", id="metric-of-another-task"),
        pytest.param({"min_samples": "0"}, "min_samples", "greater than or equal to 1", id="zero-min-samples"),
    ],
)
def test_experiment_form_shows_errors_next_to_fields(owner_client, iris, changes, field, message):
    response = owner_client.post("/models/acme/iris/experiments/", {**VALID, **changes})
    assert response.status_code == 400
    assert message in error_next_to(response, field)
    assert not Experiment.objects.exists()


def test_rows_after_the_second_are_optional_but_complete(owner_client, tenant_a, iris):
    from registry.tests.factories import create_version

    create_version(iris)
    half = {**VALID, "variant_2_weight": "20"}
    response = owner_client.post("/models/acme/iris/experiments/", half)
    assert response.status_code == 400 and "choose a version, or clear the weight" in error_next_to(response, "variant_2_version")
    response = owner_client.post("/models/acme/iris/experiments/", {**VALID, "variant_2_version": "3"})
    assert response.status_code == 400 and "give a weight from 1 to 99" in error_next_to(response, "variant_2_weight")
    three = {**VALID, "variant_0_weight": "40", "variant_1_weight": "40", "variant_2_version": "3", "variant_2_weight": "20"}
    assert owner_client.post("/models/acme/iris/experiments/", three).status_code == 302
    assert [(v["version"], v["weight"]) for v in Experiment.objects.get().variants] == [(1, 40), (2, 40), (3, 20)]


def test_experiment_form_names_a_weight_sum_other_than_100(owner_client, iris):
    response = owner_client.post("/models/acme/iris/experiments/", {**VALID, "variant_1_weight": "40"})
    assert response.status_code == 400
    errors = re.search(
        r'<div class="errors" role="alert" id="error-variants">(.*?)</div>', response.content.decode(), re.S
    ).group(1)
    assert "weights sum to 90; they must sum to 100" in errors
    assert not Experiment.objects.exists()


def test_stop_asks_first(owner_client, experiment):
    url = f"/models/acme/iris/experiments/{experiment.id}/stop/"
    asked = owner_client.post(url)
    assert asked.status_code == 200 and b"Stop experiment" in asked.content and b'name="confirmed" value="yes"' in asked.content
    experiment.refresh_from_db()
    assert experiment.status == "running"
    assert owner_client.post(url, {"confirmed": "yes"})["Location"] == f"/models/acme/iris/experiments/{experiment.id}/"
    experiment.refresh_from_db()
    assert experiment.status == "stopped"
    again = owner_client.post(url, {"confirmed": "yes"}, follow=True)
    assert b"already stopped" in again.content


def test_promote_asks_first_with_a_reason_then_makes_a_release(owner_client, iris, experiment):
    url = f"/models/acme/iris/experiments/{experiment.id}/promote/"
    asked = owner_client.post(url, {"version": "2", "reason": ""})
    assert asked.status_code == 200 and b"Promote this variant" in asked.content and b'name="reason"' in asked.content
    assert not Release.objects.exists()
    response = owner_client.post(url, {"version": "2", "confirmed": "yes", "reason": "92% vs 60%"}, follow=True)
    assert b"puts version 2 in production" in response.content
    iris.refresh_from_db()
    experiment.refresh_from_db()
    assert iris.production_version.number == 2 and experiment.status == "stopped" and experiment.winner_version.number == 2
    release = Release.objects.get(registered_model=iris)
    assert (release.kind, release.reason, release.to_version.number) == ("experiment", "92% vs 60%", 2)
    page = owner_client.get(f"/models/acme/iris/experiments/{experiment.id}/").content.decode()
    assert "v2 (promoted)" in page and "Promote this variant<span" not in page
    refused = owner_client.post(url, {"version": "1", "confirmed": "yes"}, follow=True)
    assert b"already promoted version 2" in refused.content


def test_promote_refuses_a_version_outside_the_experiment(owner_client, iris, experiment):
    response = owner_client.post(
        f"/models/acme/iris/experiments/{experiment.id}/promote/", {"version": "7", "confirmed": "yes"}, follow=True
    )
    assert b"Version 7 is not a variant of this experiment" in response.content
    iris.refresh_from_db()
    assert iris.production_version is None


def test_viewer_reads_experiments_but_cannot_change_them(viewer_client, experiment):
    page = viewer_client.get(f"/models/acme/iris/experiments/{experiment.id}/")
    assert page.status_code == 200 and b"Promote this variant" not in page.content and b"Stop experiment" not in page.content
    listing = viewer_client.get("/models/acme/iris/experiments/")
    assert listing.status_code == 200 and b"Start an experiment" not in listing.content and b"is running" not in listing.content
    assert viewer_client.post(f"/models/acme/iris/experiments/{experiment.id}/stop/", {"confirmed": "yes"}).status_code == 403
    assert (
        viewer_client.post(
            f"/models/acme/iris/experiments/{experiment.id}/promote/", {"version": "2", "confirmed": "yes"}
        ).status_code
        == 403
    )
    assert viewer_client.post("/models/acme/iris/experiments/", VALID).status_code == 403
    experiment.refresh_from_db()
    assert experiment.status == "running"


def test_member_can_stop_an_experiment(member_client, experiment):
    assert member_client.post(f"/models/acme/iris/experiments/{experiment.id}/stop/", {"confirmed": "yes"}).status_code == 302
    experiment.refresh_from_db()
    assert experiment.status == "stopped"


# ---------------------------------------------------------------------------- isolation


@pytest.fixture
def analytics_pages(report, experiment) -> list[str]:
    return [
        "/models/acme/iris/drift/",
        f"/models/acme/iris/drift/{report.id}/",
        "/models/acme/iris/experiments/",
        f"/models/acme/iris/experiments/{experiment.id}/",
    ]


def test_another_organizations_drift_and_experiment_pages_answer_404_like_missing_ones(tenant_b, analytics_pages):
    outsider = signed_in(tenant_b.user)
    for path in analytics_pages:
        response = outsider.get(path)
        missing = outsider.get(path.replace("acme", "no-such-org"))
        assert response.status_code == 404 == missing.status_code, path
        assert without_csrf(response.content) == without_csrf(missing.content)


def test_another_organizations_drift_and_experiment_actions_answer_404(tenant_b, report, experiment):
    outsider = signed_in(tenant_b.user)
    base = f"/models/acme/iris/experiments/{experiment.id}"
    assert outsider.post("/models/acme/iris/drift/", {"version": "1", "window_hours": "2"}).status_code == 404
    assert outsider.post("/models/acme/iris/experiments/", VALID).status_code == 404
    assert outsider.post(f"{base}/stop/", {"confirmed": "yes"}).status_code == 404
    assert outsider.post(f"{base}/promote/", {"version": "2", "confirmed": "yes"}).status_code == 404
    experiment.refresh_from_db()
    assert experiment.status == "running" and DriftReport.objects.count() == 1 and Experiment.objects.count() == 1


def test_a_report_or_experiment_of_another_organization_is_not_found_under_ones_own_model(tenant_a, tenant_b, report, experiment):
    """globex's owner asks for acme's report and experiment ids under globex's own model."""
    model, _ = af.iris_model(tenant_b, name="iris")
    outsider = signed_in(tenant_b.user)
    assert outsider.get("/models/globex/iris/drift/").status_code == 200
    for path in [f"/models/globex/iris/drift/{report.id}/", f"/models/globex/iris/experiments/{experiment.id}/"]:
        assert outsider.get(path).status_code == 404, path
    assert outsider.post(f"/models/globex/iris/experiments/{experiment.id}/stop/", {"confirmed": "yes"}).status_code == 404
    listing = outsider.get("/models/globex/iris/experiments/").content.decode()
    assert "v2 vs v1" not in listing and f"report-{report.id}" not in outsider.get("/models/globex/iris/drift/").content.decode()


def test_drift_and_experiment_pages_need_login(client, report, experiment):
    for path in [
        "/models/acme/iris/drift/",
        f"/models/acme/iris/drift/{report.id}/",
        "/models/acme/iris/experiments/",
        f"/models/acme/iris/experiments/{experiment.id}/",
    ]:
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next="), path
