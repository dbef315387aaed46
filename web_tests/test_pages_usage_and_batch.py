"""The usage and batch job pages through Django's test client: figures from the rollups,
the submit form's errors next to its fields, the job page and its htmx status block, cancel
after a confirmation, roles as in the API, and tenant isolation (404 like missing)."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from accounts.models import Membership, Role
from accounts.principals import Caller
from analytics.services.usage import hour_floor, roll_up_usage
from analytics.tests import factories as usage_factories
from inference.batch import services as batch_services
from inference.models import BatchJob
from inference.tests.test_batch_api import csv_bytes, iris_rows, run_job
from web_tests.conftest import member_of, signed_in
from web_tests.test_pages import error_next_to, without_csrf

pytestmark = pytest.mark.django_db


@pytest.fixture
def iris(tenant_a):
    """acme/iris with two versions, the first in production."""
    model, _ = usage_factories.iris_model(tenant_a, versions=2)
    return model


def submitted(tenant, model, content: bytes, name: str = "rows.csv", **options) -> BatchJob:
    upload = SimpleUploadedFile(name, content, content_type="text/csv")
    return batch_services.submit_job(caller=Caller(user=tenant.user), model=model, upload=upload, **options).job


@pytest.fixture
def job(tenant_a, iris) -> BatchJob:
    return submitted(tenant_a, iris, csv_bytes(iris_rows(5)))


def csv_upload(content: bytes, name: str = "rows.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="text/csv")


# ---------------------------------------------------------------------------- usage


def test_usage_page_charts_the_rolled_up_requests(owner_client, iris):
    version = iris.production_version
    hour = hour_floor(timezone.now() - timedelta(hours=2))
    usage_factories.ingest(
        [
            usage_factories.record(version, at=hour + timedelta(minutes=1), lat=10.0),
            usage_factories.record(version, at=hour + timedelta(minutes=2), lat=20.0, hit=True),
            usage_factories.record(version, at=hour + timedelta(minutes=3), lat=30.0, status=400, err="invalid_input"),
            usage_factories.record(version, at=hour + timedelta(hours=1, minutes=5), lat=40.0, rows=3),
        ]
    )
    roll_up_usage()
    page = owner_client.get("/models/acme/iris/usage/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Usage: last 24 hours, per hour" in html
    assert re.search(r"<dt>Requests</dt><dd>4</dd>", html) and re.search(r"<dt>Errors</dt><dd>1 \(25%\)</dd>", html)
    assert re.search(r"<dt>Cache hit rate</dt><dd>25%</dd>", html) and re.search(r"<dt>Rows predicted</dt><dd>6</dd>", html)
    assert html.count('role="img"') == 3
    assert "<title>Requests and errors per hour</title>" in html and "<title>Latency percentiles per hour</title>" in html
    assert "4 requests and 1 errors in all; the busiest hour" in html and f"{hour:%Y-%m-%d %H:00}, had 3." in html
    assert "1 of 4 requests answered from the cache (25%)" in html
    rows = re.findall(r'<tr>\s*<th scope="row">([^<]+)</th>\s*<td>(\d+)</td><td>(\d+)</td><td>(\d+)</td>', html)
    assert rows == [(f"{hour:%Y-%m-%d %H:%M}", "3", "3", "1"), (f"{hour + timedelta(hours=1):%Y-%m-%d %H:%M}", "1", "3", "0")]
    assert "this model's figures were last updated" in html

    daily = owner_client.get("/models/acme/iris/usage/?range=30d").content.decode()
    assert "Usage: last 30 days, per day" in daily and "<title>Requests and errors per day</title>" in daily
    assert re.search(r"<dt>Requests</dt><dd>4</dd>", daily)


def test_usage_page_before_any_rollup_says_so(viewer_client, iris):
    page = viewer_client.get("/models/acme/iris/usage/?range=7d&granularity=day")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Usage: last 7 days, per day" in html and "no request of this model has been rolled up yet" in html
    assert "8 days from" in html and ": no requests." in html  # the charts' descriptions


@pytest.mark.parametrize(
    "query, field",
    [pytest.param("range=1y", "range", id="range"), pytest.param("range=7d&granularity=minute", "granularity", id="granularity")],
)
def test_usage_page_names_a_bad_choice_next_to_its_field(owner_client, iris, query, field):
    page = owner_client.get(f"/models/acme/iris/usage/?{query}")
    assert page.status_code == 400
    assert "Select a valid choice" in error_next_to(page, field)
    assert "Usage: last 24 hours, per hour" in page.content.decode()  # the default range, meanwhile


# ---------------------------------------------------------------------------- links


def test_model_pages_link_to_usage_and_batch_jobs_and_the_org_to_its_jobs(owner_client, iris):
    for path, current in [
        ("/models/acme/iris/", "Versions"),
        ("/models/acme/iris/usage/", "Usage"),
        ("/models/acme/iris/batch-jobs/", "Batch jobs"),
    ]:
        html = owner_client.get(path).content.decode()
        tabs = re.search(r'<nav aria-label="Model" class="tabs subtabs">(.*?)</nav>', html, re.S).group(1)
        assert re.findall(r'href="([^"]+)"', tabs) == [
            "/models/acme/iris/",
            "/models/acme/iris/usage/",
            "/models/acme/iris/batch-jobs/",
            "/models/acme/iris/drift/",
            "/models/acme/iris/compare/",
            "/models/acme/iris/experiments/",
        ]
        assert re.search(r'aria-current="page">([^<]+)</a>', tabs).group(1) == current, path
        assert 'href="/orgs/acme/batch-jobs/"' in html


# ---------------------------------------------------------------------------- batch jobs


def test_submit_a_job_through_the_page_then_follow_it_to_the_result(owner_client, iris):
    rows = iris_rows(7)
    page = owner_client.get("/models/acme/iris/batch-jobs/")
    assert page.status_code == 200 and b'id="batch-form"' in page.content and b"No batch jobs yet." in page.content
    assert b"The production version (v1)" in page.content and b'<option value="2">v2 \xc2\xb7 none</option>' in page.content
    response = owner_client.post(
        "/models/acme/iris/batch-jobs/",
        {"file": csv_upload(csv_bytes(rows)), "version": "2", "on_error": "fail", "probabilities": "on"},
    )
    job = BatchJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/models/acme/iris/batch-jobs/{job.id}/"
    assert (job.version.number, job.want_proba, job.status) == (2, True, "queued")

    queued = owner_client.get(response["Location"]).content.decode()
    assert "is queued: rows.csv against v2" in queued
    assert f'hx-get="/models/acme/iris/batch-jobs/{job.id}/" hx-trigger="every 1s"' in queued
    assert (
        '<progress id="job-progress" max="100" value="0">' in queued
        and "Cancel job" in queued
        and "Download result" not in queued
    )
    partial = owner_client.get(response["Location"], HTTP_HX_REQUEST="true")
    assert partial.content.lstrip().startswith(b'<div id="job-status"') and b"<html" not in partial.content
    assert "HX-Request" in partial["Vary"]

    run_job(job.id)
    done = owner_client.get(response["Location"], HTTP_HX_REQUEST="true").content.decode()
    assert "hx-trigger" not in done  # the polling stops
    assert '<progress id="job-progress" max="100" value="100">' in done and "7 of 7 rows done" in done
    assert f'id="job-download" href="/api/v1/batch-jobs/{job.id}/result"' in done and "Cancel job" not in done
    download = owner_client.get(f"/api/v1/batch-jobs/{job.id}/result")
    result = pd.read_csv(io.BytesIO(b"".join(download.streaming_content)))
    assert len(result) == 7 and list(result.columns[-4:]) == ["prediction", "probability_0", "probability_1", "probability_2"]
    np.testing.assert_allclose(result.iloc[:, :4].to_numpy(), rows)

    listed = owner_client.get("/models/acme/iris/batch-jobs/").content.decode()
    assert f'<tr id="job-{job.id}">' in listed and "Succeeded" in listed and "7 of 7" in listed


@pytest.mark.parametrize(
    "data, field, message",
    [
        pytest.param({}, "file", "This field is required.", id="no-file"),
        pytest.param({"file": b""}, "file", "The submitted file is empty.", id="empty-file"),
        pytest.param(
            {"file": b"a,b,c,d,e\n1,2,3,4,5\n"}, "file", "unexpected e. The model expects f0, f1, f2, f3.", id="wrong-columns"
        ),
        pytest.param({"file": b"a,b,c,d\n"}, "file", "header but no rows", id="header-only"),
        pytest.param({"file": b"a,b,c,d\n1,2,3,4\n", "version": "9"}, "version", "Select a valid choice", id="unknown-version"),
        pytest.param(
            {"file": b"a,b,c,d\n1,2,3,4\n", "on_error": "retry"}, "on_error", "Select a valid choice", id="bad-on-error"
        ),
    ],
)
def test_submit_form_names_the_problem_next_to_its_field(owner_client, iris, data, field, message):
    if "file" in data:
        data = {**data, "file": csv_upload(data["file"])}
    response = owner_client.post("/models/acme/iris/batch-jobs/", {"on_error": "fail", **data})
    assert response.status_code == 400
    assert message in error_next_to(response, field)
    assert not BatchJob.objects.exists()


def test_submit_without_a_production_version_asks_for_one_next_to_version(owner_client, iris):
    iris.production_version = None
    iris.save()
    response = owner_client.post(
        "/models/acme/iris/batch-jobs/", {"file": csv_upload(csv_bytes(iris_rows(2))), "on_error": "fail"}
    )
    assert response.status_code == 400 and error_next_to(response, "version") == "no production version"
    assert b"The production version (none yet: choose one)" in response.content


def test_cancel_asks_first_then_cancels_once(owner_client, job):
    path = f"/models/acme/iris/batch-jobs/{job.id}/cancel/"
    asked = owner_client.post(path)
    assert asked.status_code == 200 and b"Cancel batch job" in asked.content and b"Keep it running" in asked.content
    assert b'name="confirmed" value="yes"' in asked.content
    job.refresh_from_db()
    assert job.status == "queued"  # nothing changes before the confirmation
    response = owner_client.post(path, {"confirmed": "yes"}, follow=True)
    assert b"Batch job %d is cancelled." % job.id in response.content
    job.refresh_from_db()
    assert job.status == "cancelled"
    again = owner_client.post(path, {"confirmed": "yes"}, follow=True)
    assert b"The job is already cancelled." in again.content


def test_viewer_reads_jobs_but_cannot_submit_or_cancel(viewer_client, job):
    page = viewer_client.get("/models/acme/iris/batch-jobs/")
    assert (
        page.status_code == 200 and f'<tr id="job-{job.id}">'.encode() in page.content and b'id="batch-form"' not in page.content
    )
    detail = viewer_client.get(f"/models/acme/iris/batch-jobs/{job.id}/")
    assert detail.status_code == 200 and b"Queued" in detail.content and b"Cancel job" not in detail.content
    assert viewer_client.post("/models/acme/iris/batch-jobs/", {"file": csv_upload(csv_bytes(iris_rows(2)))}).status_code == 403
    assert viewer_client.post(f"/models/acme/iris/batch-jobs/{job.id}/cancel/", {"confirmed": "yes"}).status_code == 403
    job.refresh_from_db()
    assert job.status == "queued" and BatchJob.objects.count() == 1


def test_member_may_submit_and_cancel(member_client, job):
    assert (
        member_client.post(
            "/models/acme/iris/batch-jobs/", {"file": csv_upload(csv_bytes(iris_rows(2))), "on_error": "skip"}
        ).status_code
        == 302
    )
    assert member_client.post(f"/models/acme/iris/batch-jobs/{job.id}/cancel/", {"confirmed": "yes"}).status_code == 302
    assert sorted(BatchJob.objects.values_list("status", "on_error")) == [("cancelled", "fail"), ("queued", "skip")]


def test_failed_job_shows_its_error(owner_client, tenant_a, iris):
    failed = submitted(tenant_a, iris, b"a,b,c,d\n1,2,3,4\n5,oops,7,8\n")
    run_job(failed.id)
    html = owner_client.get(f"/models/acme/iris/batch-jobs/{failed.id}/").content.decode()
    assert (
        "Failed" in html and 'id="job-error" role="alert"' in html and "Row 1, column &#x27;f1&#x27;: expected a number" in html
    )
    assert "hx-trigger" not in html and "Download result" not in html


def test_organization_list_shows_every_model_of_that_organization_only(tenant_a, tenant_b, iris, job):
    other, _ = usage_factories.iris_model(tenant_a, "churn")
    second = submitted(tenant_a, other, csv_bytes(iris_rows(2)))
    theirs, _ = usage_factories.iris_model(tenant_b, "fraud")
    foreign = submitted(tenant_b, theirs, csv_bytes(iris_rows(2)))
    both = member_of(tenant_a.organization, Role.VIEWER, email="both@example.com")
    Membership.objects.create(user=both, organization=tenant_b.organization, role=Role.VIEWER)
    page = signed_in(both).get("/orgs/acme/batch-jobs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert re.findall(r'<tr id="job-(\d+)">', html) == [str(second.id), str(job.id)]  # newest first
    assert f'href="/models/acme/churn/batch-jobs/{second.id}/"' in html and f"job-{foreign.id}" not in html
    assert 'aria-current="page">Batch jobs</a>' in html


# ---------------------------------------------------------------------------- isolation

OTHER_ORG_PAGES = [
    "/orgs/acme/batch-jobs/",
    "/models/acme/iris/usage/",
    "/models/acme/iris/batch-jobs/",
    "/models/acme/iris/batch-jobs/{job}/",
]


@pytest.mark.parametrize("path", OTHER_ORG_PAGES)
def test_another_organizations_page_answers_404_like_a_missing_one(tenant_b, job, path):
    outsider = signed_in(tenant_b.user)
    path = path.format(job=job.id)
    for request in (outsider.get, outsider.post):
        response = request(path)
        missing = request(path.replace("acme", "no-such-org"))
        assert response.status_code == 404 == missing.status_code, path
        assert without_csrf(response.content) == without_csrf(missing.content)


def test_another_organizations_job_answers_404_through_any_url(tenant_a, tenant_b, job):
    theirs, _ = usage_factories.iris_model(tenant_b, "iris")
    outsider = signed_in(tenant_b.user)
    for path in (f"/models/globex/iris/batch-jobs/{job.id}/", f"/models/globex/iris/batch-jobs/{job.id}/cancel/"):
        response = outsider.post(path, {"confirmed": "yes"}) if path.endswith("cancel/") else outsider.get(path)
        missing = outsider.get(f"/models/globex/iris/batch-jobs/{job.id + 1000}/")
        assert response.status_code == 404 == missing.status_code
        assert without_csrf(response.content) == without_csrf(missing.content)
    # Another model of the same organization does not show it either.
    other, _ = usage_factories.iris_model(tenant_a, "churn")
    assert signed_in(tenant_a.user).get(f"/models/acme/churn/batch-jobs/{job.id}/").status_code == 404
    assert outsider.post("/models/acme/iris/batch-jobs/", {"file": csv_upload(csv_bytes(iris_rows(2)))}).status_code == 404
    job.refresh_from_db()
    assert job.status == "queued" and BatchJob.objects.count() == 1


def test_pages_need_login(client, job):
    for path in [
        "/orgs/acme/batch-jobs/",
        "/models/acme/iris/usage/",
        "/models/acme/iris/batch-jobs/",
        f"/models/acme/iris/batch-jobs/{job.id}/",
    ]:
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next="), path
    assert client.post(f"/models/acme/iris/batch-jobs/{job.id}/cancel/", {"confirmed": "yes"}).status_code == 302
    job.refresh_from_db()
    assert job.status == "queued"
