"""Drift reports through the API and the beat: tests, verdicts, alerts, webhooks, the gauge."""

import hashlib
import hmac
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pytest
from django.utils import timezone
from scipy import stats

from accounts.models import AuditEvent
from analytics.models import AlertSettings, DriftReport
from analytics.selectors.drift import drift_gauge_samples
from analytics.services import alerts, drift
from analytics.tests import factories as af
from registry import artifacts
from registry.tests import factories as rf

pytestmark = pytest.mark.django_db
URL = "/api/v1/models/acme/iris/drift-reports"


def store_reference(version, frame: pd.DataFrame) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.NamedTemporaryFile("w", suffix=".csv") as handle:
        frame.to_csv(handle, index=False)
        handle.flush()
        name = artifacts.store(Path(handle.name), f"orgs/{version.registered_model.organization_id}/reference-{version.pk}.csv")
    type(version).objects.filter(pk=version.pk).update(reference_data=name, reference_rows=len(frame))
    version.refresh_from_db()


@pytest.fixture
def iris(tenant_a):
    model, (version,) = af.iris_model(tenant_a)
    x, _ = rf.iris_data()
    store_reference(version, pd.DataFrame(x, columns=["f0", "f1", "f2", "f3"]))
    return model, version


def serve(version, rows, *, at=None, outputs=None):
    at = at or timezone.now() - timedelta(minutes=30)
    af.ingest(
        [
            af.record(
                version, at=at + timedelta(seconds=i), **{"in": [list(map(float, row))], "out": [outputs[i] if outputs else 0]}
            )
            for i, row in enumerate(rows)
        ]
    )


def test_an_unshifted_window_is_not_drift_and_each_statistic_is_scipys(tenant_a, iris):
    _, version = iris
    x, _y = rf.iris_data()
    rng = np.random.default_rng(0)
    picked = rng.choice(len(x), size=120, replace=False)
    serve(version, x[picked], outputs=rf.iris_model().predict(x[picked]).tolist())
    queued = tenant_a.key_client().post(URL, {"window_hours": 2}, format="json").json()

    drift.compute_report(report_id=queued["id"])  # the worker's side

    report = tenant_a.key_client().get(f"/api/v1/drift-reports/{queued['id']}").json()
    assert (report["status"], report["error"]) == ("done", "")
    assert report["is_drift"] is False
    assert (report["reference_source"], report["reference_rows"], report["current_rows"]) == ("reference_data", 150, 120)
    assert [f["name"] for f in report["features"]] == ["f0", "f1", "f2", "f3"]
    for j, feature in enumerate(report["features"]):
        assert feature["test"] == "ks"
        expected = stats.ks_2samp(x[:, j], x[picked, j])
        assert (feature["statistic"], feature["p_value"]) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue))
        assert feature["drifted"] == bool(expected.pvalue < 0.05)
        assert len(feature["histogram"]["reference"]) == len(feature["histogram"]["current"])
    assert report["prediction"]["test"] == "chisquare"
    assert report["prediction"]["drifted"] is False
    assert not AuditEvent.objects.filter(action="drift.detected").exists()
    listed = tenant_a.key_client().get(URL).json()["results"]
    assert [(r["id"], r["status"]) for r in listed] == [(report["id"], "done")]


def test_the_post_only_queues_the_report_for_the_worker(
    tenant_a, iris, django_capture_on_commit_callbacks, django_assert_max_num_queries
):
    _, version = iris
    serve(version, rf.iris_data()[0][:100])

    with django_capture_on_commit_callbacks() as callbacks, django_assert_max_num_queries(20):
        response = tenant_a.key_client().post(URL, {"window_hours": 2}, format="json")

    assert response.status_code == 202, response.content
    queued = response.json()
    assert response["Location"] == f"/api/v1/drift-reports/{queued['id']}"
    assert (queued["status"], queued["version"], queued["trigger"]) == ("pending", 1, "api")
    assert (queued["is_drift"], queued["n_features"], queued["current_rows"], queued["features"], queued["started_at"]) == (
        None,
        None,
        None,
        [],
        None,
    )
    assert len(callbacks) == 1  # the task, sent once the report is committed
    stored = DriftReport.objects.get(id=queued["id"])
    assert (stored.status, stored.features, stored.is_drift) == ("pending", [], None)
    assert tenant_a.key_client().get(f"/api/v1/drift-reports/{stored.id}").json()["status"] == "pending"

    finished = drift.compute_report(report_id=stored.id)

    assert (finished.status, finished.current_rows, finished.n_features) == ("done", 100, 4)
    assert finished.started_at is not None and finished.finished_at >= finished.started_at
    assert drift.compute_report(report_id=stored.id) is None  # a second delivery changes nothing
    assert DriftReport.objects.get(id=stored.id).finished_at == finished.finished_at


def test_a_second_report_while_one_is_pending_is_409_naming_it(tenant_a, iris):
    _, version = iris
    serve(version, rf.iris_data()[0][:50])
    client = tenant_a.key_client()
    first = client.post(URL, {"window_hours": 2}, format="json").json()

    again = client.post(URL, {"window_hours": 3}, format="json")

    assert again.status_code == 409
    problem = again.json()
    assert (problem["code"], problem["report_id"], problem["report_status"]) == ("conflict", first["id"], "pending")
    assert f"/api/v1/drift-reports/{first['id']}" in problem["detail"]
    assert DriftReport.objects.count() == 1
    DriftReport.objects.filter(id=first["id"]).update(status="running")
    assert client.post(URL, {}, format="json").json()["report_status"] == "running"
    drift.compute_report(report_id=first["id"])  # a redelivered task computes a running report
    assert client.post(URL, {"window_hours": 2}, format="json").status_code == 202


def test_another_models_report_is_not_held_up(tenant_a, iris):
    _, version = iris
    _other, (other_version,) = af.iris_model(tenant_a, name="other")
    store_reference(other_version, pd.DataFrame(rf.iris_data()[0], columns=["f0", "f1", "f2", "f3"]))
    serve(version, rf.iris_data()[0][:50])
    serve(other_version, rf.iris_data()[0][:50])
    client = tenant_a.key_client()
    assert client.post(URL, {}, format="json").status_code == 202
    assert client.post("/api/v1/models/acme/other/drift-reports", {}, format="json").status_code == 202


def test_a_report_stuck_unfinished_is_failed_and_frees_the_model(settings, tenant_a, iris):
    _, version = iris
    serve(version, rf.iris_data()[0][:50])
    client = tenant_a.key_client()
    stuck = client.post(URL, {}, format="json").json()
    DriftReport.objects.filter(id=stuck["id"]).update(
        created_at=timezone.now() - timedelta(seconds=settings.ANALYTICS_DRIFT_STALE_SECONDS + 1)
    )

    assert client.post(URL, {}, format="json").status_code == 202
    failed = client.get(f"/api/v1/drift-reports/{stuck['id']}").json()
    assert (failed["status"], failed["error"]) == ("failed", "The worker did not finish this report in time.")
    assert drift.compute_report(report_id=stuck["id"]) is None  # its task, arriving late, does nothing


def test_the_organizations_hourly_limit_is_429_with_retry_after(settings, tenant_a, tenant_b, iris):
    settings.ANALYTICS_DRIFT_REPORTS_PER_HOUR = 2
    _, version = iris
    serve(version, rf.iris_data()[0][:50])
    client = tenant_a.key_client()
    for _ in range(2):
        queued = client.post(URL, {}, format="json")
        assert queued.status_code == 202
        drift.compute_report(report_id=queued.json()["id"])
    oldest = DriftReport.objects.order_by("created_at").first()
    DriftReport.objects.filter(id=oldest.id).update(created_at=timezone.now() - timedelta(minutes=50))

    refused = client.post(URL, {}, format="json")

    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert 590 <= int(refused["Retry-After"]) <= 600  # the oldest of the two leaves the hour in ten minutes
    assert DriftReport.objects.count() == 2
    # Scheduled reports are not counted, nor are other organizations limited by this one.
    _, (b_version,) = af.iris_model(tenant_b, name="iris")
    store_reference(b_version, pd.DataFrame(rf.iris_data()[0], columns=["f0", "f1", "f2", "f3"]))
    serve(b_version, rf.iris_data()[0][:50])
    assert tenant_b.key_client().post("/api/v1/models/globex/iris/drift-reports", {}, format="json").status_code == 202
    DriftReport.objects.filter(id=oldest.id).update(created_at=timezone.now() - timedelta(minutes=61))
    assert client.post(URL, {}, format="json").status_code == 202


def test_a_window_pruned_before_the_worker_ran_fails_the_report_with_the_reason(tenant_a, iris):
    from inference.models import PredictionRecord

    _, version = iris
    serve(version, rf.iris_data()[0][:50])
    queued = tenant_a.key_client().post(URL, {"window_hours": 2}, format="json").json()
    PredictionRecord.objects.all().delete()

    drift.compute_report(report_id=queued["id"])

    report = tenant_a.key_client().get(f"/api/v1/drift-reports/{queued['id']}").json()
    assert report["status"] == "failed" and "served no recorded predictions" in report["error"]
    assert report["is_drift"] is None


def test_a_shifted_window_is_drift_and_alerts_once(tenant_a, iris, django_capture_on_commit_callbacks):
    _, version = iris
    x, _ = rf.iris_data()
    shifted = x[:100] + np.array([1.5, 0.8, 2.0, 0.9])
    serve(version, shifted, outputs=[2] * 100)
    AlertSettings.objects.create(
        organization=tenant_a.organization, drift_webhook_url="https://hooks.example.com/drift", drift_webhook_secret="whsec_test"
    )
    queued = tenant_a.jwt_client().post(URL, {}, format="json").json()

    with django_capture_on_commit_callbacks() as callbacks:
        drift.compute_report(report_id=queued["id"])

    report = tenant_a.jwt_client().get(f"/api/v1/drift-reports/{queued['id']}").json()
    assert report["is_drift"] is True
    assert report["drifted_features"] == 4 and report["share_drifted"] == 1.0
    assert report["prediction"]["drifted"] is True
    assert all(f["psi_band"] == "significant" for f in report["features"])
    events = AuditEvent.objects.filter(action="drift.detected")
    assert events.count() == 1
    assert events.get().actor == tenant_a.user  # the member who asked for the report
    assert events.get().data["drifted_features"] == ["f0", "f1", "f2", "f3"]
    assert len(callbacks) == 1  # the webhook delivery, enqueued after commit
    stored = DriftReport.objects.get(id=report["id"])
    assert stored.alerted_at is not None
    assert alerts.alert_on_drift(report=stored) is False
    assert events.count() == 1


def test_a_window_without_traffic_is_a_clear_400(tenant_a, iris):
    response = tenant_a.key_client().post(URL, {"window_hours": 3}, format="json")
    assert response.status_code == 400
    problem = response.json()
    assert problem["code"] == "invalid_input"
    assert problem["errors"] == [{"field": "window_hours", "message": "no traffic in the window"}]
    assert "served no recorded predictions" in problem["detail"]


def test_a_version_without_reference_data_uses_its_first_days(tenant_a):
    _model, (version,) = af.iris_model(tenant_a, name="iris")
    x, _ = rf.iris_data()
    serve(version, x, at=timezone.now() - timedelta(days=5))
    serve(version, x[:80] + 3.0)

    report = drift.run_drift_report(
        version=version,
        window_start=timezone.now() - timedelta(hours=24),
        window_end=timezone.now(),
        trigger=DriftReport.Trigger.API,
    )

    assert report.reference_source == DriftReport.ReferenceSource.FIRST_DAYS
    assert report.reference_rows == 150
    assert report.reference_end <= report.window_start
    assert report.is_drift is True


def test_no_reference_and_no_earlier_traffic_is_a_clear_400(tenant_a):
    _, (version,) = af.iris_model(tenant_a, name="iris")
    serve(version, rf.iris_data()[0][:10])
    response = tenant_a.key_client().post(URL, {"version": 1}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "version"


def test_unknown_version_is_404_and_bad_window_is_400(tenant_a, iris):
    client = tenant_a.key_client()
    assert client.post(URL, {"version": 7}, format="json").status_code == 404
    bad = client.post(URL, {"window_hours": 0}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "window_hours"


def test_the_beat_reports_each_busy_production_version_once(tenant_a, iris):
    _, version = iris
    now = timezone.now()
    end = now.replace(minute=0, second=0, microsecond=0)
    serve(version, rf.iris_data()[0][:50], at=end - timedelta(hours=2))

    windows = drift.scheduled_windows(now=now)
    assert windows == [(version.id, end - timedelta(hours=24), end)]
    first = drift.run_scheduled_report(version_id=version.id, window_start=windows[0][1], window_end=windows[0][2])
    again = drift.run_scheduled_report(version_id=version.id, window_start=windows[0][1], window_end=windows[0][2])

    assert first is not None and first.trigger == "schedule"
    assert again is None
    assert DriftReport.objects.count() == 1
    assert drift.scheduled_windows(now=now) == []


def test_the_drift_gauge_reads_the_latest_report_of_each_production_version(tenant_a, iris):
    _, version = iris
    x, _ = rf.iris_data()
    serve(version, x[np.random.default_rng(0).choice(len(x), size=120, replace=False)])
    window = {"window_start": timezone.now() - timedelta(hours=1), "window_end": timezone.now(), "trigger": "api"}
    drift.run_drift_report(version=version, **window)
    assert list(drift_gauge_samples()) == [(["acme", "iris", "1"], 0.0)]
    serve(version, x[:60] + 5.0, at=timezone.now() - timedelta(seconds=100))
    drift.run_drift_report(
        version=version, window_start=timezone.now() - timedelta(minutes=5), window_end=timezone.now(), trigger="api"
    )
    assert list(drift_gauge_samples()) == [(["acme", "iris", "1"], 1.0)]


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_webhook_is_delivered_signed_and_only_once(settings, tenant_a, iris):
    settings.ANALYTICS_WEBHOOK_ALLOW_PRIVATE = True
    _, version = iris
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        AlertSettings.objects.create(
            organization=tenant_a.organization,
            drift_webhook_url=f"http://127.0.0.1:{server.server_port}/hook",
            drift_webhook_secret="whsec_abc",
        )
        serve(version, rf.iris_data()[0][:100] + 4.0)
        report = drift.run_drift_report(
            version=version, window_start=timezone.now() - timedelta(hours=1), window_end=timezone.now(), trigger="api"
        )

        assert alerts.deliver_drift_webhook(report_id=report.id) is True
        assert alerts.deliver_drift_webhook(report_id=report.id) is True  # already delivered: not sent again
    finally:
        server.shutdown()
    assert len(_Receiver.received) == 1
    headers, body = _Receiver.received[0]
    timestamp, signature = (part.split("=", 1)[1] for part in headers["X-Modelhost-Signature"].split(","))
    assert signature == hmac.new(b"whsec_abc", f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers["X-Modelhost-Delivery"] == f"drift-report-{report.id}"
    payload = json.loads(body)
    assert (payload["event"], payload["model"], payload["version"], payload["report_id"]) == (
        "drift.detected",
        "iris",
        1,
        report.id,
    )
    report.refresh_from_db()
    assert report.webhook_delivered_at is not None and report.webhook_attempts == 1


def test_a_failing_webhook_is_retried_not_marked_delivered(settings, tenant_a, iris):
    settings.ANALYTICS_WEBHOOK_ALLOW_PRIVATE = True
    _, version = iris
    AlertSettings.objects.create(
        organization=tenant_a.organization, drift_webhook_url="http://127.0.0.1:9/nothing-listens", drift_webhook_secret="s"
    )
    serve(version, rf.iris_data()[0][:100] + 4.0)
    report = drift.run_drift_report(
        version=version, window_start=timezone.now() - timedelta(hours=1), window_end=timezone.now(), trigger="api"
    )
    with pytest.raises(alerts.WebhookDeliveryFailed):
        alerts.deliver_drift_webhook(report_id=report.id)
    report.refresh_from_db()
    assert report.webhook_delivered_at is None and report.webhook_error


@pytest.mark.parametrize(
    "url, message",
    [
        pytest.param("http://hooks.example.com/x", "must be https", id="plain-http"),
        pytest.param("https://127.0.0.1/x", "private or reserved address", id="loopback"),
        pytest.param("https://10.1.2.3/x", "private or reserved address", id="private-network"),
        pytest.param("https://169.254.169.254/latest", "private or reserved address", id="cloud-metadata"),
    ],
)
def test_webhook_urls_to_private_networks_are_refused(tenant_a, url, message):
    response = tenant_a.jwt_client().patch("/api/v1/orgs/acme/alert-settings", {"drift_webhook_url": url}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0] == {"field": "drift_webhook_url", "message": message}


def test_alert_settings_show_the_secret_once(tenant_a):
    client = tenant_a.jwt_client()
    response = client.patch(
        "/api/v1/orgs/acme/alert-settings", {"drift_webhook_url": "https://93.184.215.14/hook"}, format="json"
    )
    assert response.status_code == 200, response.content
    secret = response.json()["secret"]
    assert secret.startswith("whsec_")
    shown = client.get("/api/v1/orgs/acme/alert-settings").json()
    assert "secret" not in shown and shown["secret_prefix"] == secret[:10]
    assert AuditEvent.objects.filter(action="alert_settings.updated").count() == 1


def test_a_webhook_that_redirects_to_a_loopback_address_is_not_followed(settings, tenant_a, iris):
    from inference.tests.test_webhooks import LocalServer

    settings.ANALYTICS_WEBHOOK_ALLOW_PRIVATE = True  # the first hop is this machine too
    _, version = iris
    inner = LocalServer("127.0.0.1", status=204)
    redirector = LocalServer("127.0.0.2", status=302, location=f"http://127.0.0.1:{inner.port}/internal")
    try:
        AlertSettings.objects.create(
            organization=tenant_a.organization, drift_webhook_url=f"{redirector.url}/hook", drift_webhook_secret="whsec_abc"
        )
        serve(version, rf.iris_data()[0][:100] + 4.0)
        report = drift.run_drift_report(
            version=version, window_start=timezone.now() - timedelta(hours=1), window_end=timezone.now(), trigger="api"
        )
        with pytest.raises(alerts.WebhookDeliveryFailed, match="302"):
            alerts.deliver_drift_webhook(report_id=report.id)
    finally:
        inner.close()
        redirector.close()
    assert len(redirector.received) == 1
    assert inner.received == []
    report.refresh_from_db()
    assert report.webhook_delivered_at is None and "302" in report.webhook_error
