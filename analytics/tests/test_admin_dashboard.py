"""The operators' dashboard in the Django admin: charts from rollups, drift, experiments."""

from datetime import timedelta

import numpy as np
import pytest
from django.test import Client
from django.utils import timezone

from accounts.principals import Caller
from accounts.tests.factories import UserFactory
from analytics.models import DriftReport
from analytics.services import drift, usage
from analytics.tests import factories as af
from inference.experiments import services as experiment_services
from registry.tests import factories as rf

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> Client:
    client = Client()
    client.force_login(UserFactory(email="ops@modelhost.example", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def busy_platform(tenant_a):
    model, (v1, _v2) = af.iris_model(tenant_a, versions=2)
    x, _ = rf.iris_data()
    now = timezone.now()
    af.ingest(
        [af.record(v1, at=now - timedelta(hours=h, minutes=1), lat=1.0 + h, **{"in": [x[h % 150].tolist()]}) for h in range(30)]
    )
    af.ingest([af.record(v1, at=now - timedelta(days=d, hours=1), lat=2.0) for d in range(2, 6)])
    usage.roll_up_usage()
    af.ingest([af.record(v1, at=now - timedelta(minutes=5), **{"in": [(x[i] + 5).tolist()]}) for i in range(60)])
    drift.run_drift_report(version=v1, window_start=now - timedelta(minutes=10), window_end=now, trigger="api")
    experiment_services.create_experiment(
        caller=Caller(user=tenant_a.user),
        model=model,
        name="blue-green",
        variants=[{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
    )
    return model, v1


def test_dashboard_draws_charts_and_lists_what_needs_attention(operator, busy_platform):
    response = operator.get("/admin/analytics/platformdashboard/")
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" viewBox') == 7
    assert "Requests per day, last 14 days" in page
    assert "<polyline" in page
    assert "acme/iris" in page  # top models, drifting models
    assert "Drifting models (1)" in page
    assert "blue-green" in page and "Running experiments (1)" in page


def test_operator_runs_a_drift_report_from_the_dashboard(operator, busy_platform):
    _, version = busy_platform
    response = operator.post(
        "/admin/analytics/platformdashboard/run-drift-report/", {"version_id": version.pk, "window_hours": 1}
    )
    report = DriftReport.objects.filter(trigger="admin").get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/analytics/driftreport/{report.pk}/change/"
    assert "<strong>Pending</strong> (computed by the worker)" in operator.get(response["Location"]).content.decode()
    drift.compute_report(report_id=report.pk)
    page = operator.get(response["Location"]).content.decode()
    assert "features drifted" in page and "<td>f0</td>" in page


def test_a_drift_report_without_traffic_is_a_message_not_an_error(operator, tenant_a):
    _, (version,) = af.iris_model(tenant_a)
    response = operator.post(
        "/admin/analytics/platformdashboard/run-drift-report/", {"version_id": version.pk, "window_hours": 1}, follow=True
    )
    assert response.status_code == 200
    assert "served no recorded predictions" in response.content.decode()


def test_the_dashboard_is_for_staff_only(tenant_a):
    client = Client()
    client.force_login(tenant_a.user)
    response = client.get("/admin/analytics/platformdashboard/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_charts_escape_labels_and_survive_empty_series():
    from analytics import charts

    svg = charts.bar_chart([("<script>", 3.0)], title="a & b")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "no data" in charts.line_chart([], title="empty")
    assert "<circle" in charts.line_chart([(timezone.now(), 1.0)], title="one point")
    assert np.isfinite(float(charts._nice_ceiling(0.037)))


def test_dashboard_counts_batch_jobs_by_state(operator, busy_platform):
    from inference.models import BatchJob

    model, version = busy_platform
    for status in ("queued", "running", "running", "failed"):
        BatchJob.objects.create(
            organization=model.organization,
            registered_model=model,
            version=version,
            status=status,
            input_format="csv",
            input_name="in.csv",
            storage_prefix="batch/x",
            chunk_rows=100,
            chunk_max_bytes=1000,
        )
    page = operator.get("/admin/analytics/platformdashboard/").content.decode()
    assert "Batch jobs by state" in page
    assert "<tr><td>running</td><td>2</td></tr>" in page and "<tr><td>failed</td><td>1</td></tr>" in page


def test_lines_chart_names_each_series_and_describes_itself():
    from datetime import datetime, timedelta

    from analytics import charts

    start = datetime(2025, 3, 1, 10)
    hours = [start + timedelta(hours=i) for i in range(3)]
    svg = charts.lines_chart(
        [
            charts.Series("Requests", list(zip(hours, [4, None, 2], strict=True))),
            charts.Series("p<95>", list(zip(hours, [1, 1, 1], strict=True)), "#7a4b00", "6 3"),
        ],
        title="Requests & latency",
        description="3 hours: <6> requests",
        y_max=8,
        time_format="%H:00",
    )
    assert "<title>Requests &amp; latency</title><desc>3 hours: &lt;6&gt; requests</desc>" in svg
    assert ">Requests</text>" in svg and ">p&lt;95&gt;</text>" in svg  # the legend
    assert svg.count("<circle") == 2  # the gap splits the first series into two points
    assert 'stroke-dasharray="6 3" points=' in svg
    assert ">8</text>" in svg and ">4</text>" in svg  # y_max fixes the axis: 0, 2, 4, 6, 8
    assert 'text-anchor="end" font-family="system-ui, sans-serif" font-size="11" fill="#444">12:00</text>' in svg
