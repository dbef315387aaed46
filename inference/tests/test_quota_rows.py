"""Monthly quotas count predicted rows on every path that predicts: native, V2, /invocations,
the try-it form (a person's session) and batch jobs (reserved at submission, settled at the end)."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts.models import ApiKey, Organization
from inference.batch import services as batch_services
from inference.models import BatchJob
from inference.tests.test_batch_api import csv_bytes, iris_rows, run_job
from platform_site.redis_client import get_redis
from registry.tests import factories as f

pytestmark = pytest.mark.django_db

ROW = f.IRIS_ROW
PREDICT = "/api/v1/models/acme/iris/predict"


@pytest.fixture
def iris(tenant_a):
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, f.iris_model(), promote=True)
    return model


def rows(n: int) -> list[list[float]]:
    return iris_rows(n).tolist()


def used(subject: str) -> int:
    """This month's counted rows of a quota subject (`k<key id>`, `u<user id>` or `o<org id>`)."""
    (key,) = get_redis().keys(f"mh:q:{subject}:*")
    return int(get_redis().get(key))


def set_org_quota(tenant, quota: int) -> None:
    Organization.objects.filter(id=tenant.organization.id).update(monthly_quota=quota)


def test_ten_thousand_rows_do_not_pass_a_quota_of_five(tenant_a, iris):
    ApiKey.objects.filter(id=tenant_a.api_key_id).update(monthly_quota=5)
    client = tenant_a.key_client()

    answers = [client.post(PREDICT, {"inputs": rows(10_000)}, format="json") for _ in range(5)]

    assert [a.status_code for a in answers] == [429] * 5
    refused = answers[0]
    assert refused.json()["code"] == "quota_exceeded"
    assert "monthly quota is 5 predicted rows and 5 are left; this asks for 10000" in refused.json()["detail"]
    assert (refused["X-Quota-Limit"], refused["X-Quota-Remaining"]) == ("5", "5")
    assert int(refused["Retry-After"]) == int(refused["X-Quota-Reset"]) > 0
    # Five one-row requests fit exactly; the sixth does not.
    assert [client.post(PREDICT, {"inputs": [ROW]}, format="json").status_code for _ in range(6)] == [200] * 5 + [429]
    assert used(f"k{tenant_a.api_key_id}") == 5


def test_rows_are_counted_per_key_and_per_organization_and_shown_in_headers(tenant_a, iris):
    set_org_quota(tenant_a, 50_000)
    client = tenant_a.key_client()

    answers = [client.post(PREDICT, {"inputs": rows(10_000)}, format="json") for _ in range(6)]

    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert [a["X-Quota-Remaining"] for a in answers[:5]] == ["40000", "30000", "20000", "10000", "0"]
    assert answers[0]["X-Quota-Limit"] == "50000"
    assert "organization's monthly quota is 50000 predicted rows and 0 are left" in answers[5].json()["detail"]
    assert used(f"o{tenant_a.organization.id}") == used(f"k{tenant_a.api_key_id}") == 50_000


def test_a_request_rate_limit_still_counts_requests(tenant_a, iris):
    ApiKey.objects.filter(id=tenant_a.api_key_id).update(rate_limit_per_minute=2)
    client = tenant_a.key_client()
    statuses = [client.post(PREDICT, {"inputs": rows(100)}, format="json").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize(
    "path, body",
    [
        pytest.param(PREDICT, {"inputs": rows(3)}, id="native"),
        pytest.param(
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64", "data": sum(rows(3), [])}]},
            id="v2",
        ),
        pytest.param("/api/v1/models/acme/iris/invocations", {"instances": rows(3)}, id="mlflow"),
    ],
)
def test_every_protocol_counts_rows(tenant_a, iris, path, body):
    set_org_quota(tenant_a, 5)
    client = Client()
    first = client.post(path, body, content_type="application/json", HTTP_X_API_KEY=tenant_a.api_key)
    second = client.post(path, body, content_type="application/json", HTTP_X_API_KEY=tenant_a.api_key)
    assert (first.status_code, second.status_code) == (200, 429)
    assert second["X-Quota-Remaining"] == "2"
    assert used(f"o{tenant_a.organization.id}") == 3


def test_the_try_it_form_counts_a_persons_rows_against_the_organization(tenant_a, iris):
    set_org_quota(tenant_a, 4)
    browser = Client()
    browser.force_login(tenant_a.user)  # the try-it page posts to the predict API with the session
    first = browser.post(PREDICT, {"inputs": rows(3)}, content_type="application/json")
    second = browser.post(PREDICT, {"inputs": rows(3)}, content_type="application/json")
    assert (first.status_code, second.status_code) == (200, 429)
    assert (used(f"u{tenant_a.user.pk}"), used(f"o{tenant_a.organization.id}")) == (3, 3)


# ---------------------------------------------------------------------------- batch jobs


@pytest.fixture
def named(tenant_a):
    from accounts.principals import Caller
    from registry import services as registry_services

    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="named")
    f.create_version(model, f.iris_frame_model(), promote=True)
    return model


def submit(tenant, content: bytes, **fields):
    upload = SimpleUploadedFile("rows.csv", content, content_type="application/octet-stream")
    return tenant.key_client().post("/api/v1/models/acme/named/batch-jobs", {"file": upload, **fields}, format="multipart")


def test_a_batch_job_after_the_quota_is_used_up_is_429_with_the_quotas_headers(tenant_a, named):
    set_org_quota(tenant_a, 10_000)
    client = tenant_a.key_client()
    assert (
        client.post(
            "/api/v1/models/acme/named/predict",
            {"inputs": [dict(zip(f.IRIS_FEATURES, r, strict=True)) for r in rows(10_000)]},
            format="json",
        ).status_code
        == 200
    )

    refused = submit(tenant_a, csv_bytes(iris_rows(5_000)))

    assert refused.status_code == 429
    assert refused.json()["code"] == "quota_exceeded"
    assert (refused["X-Quota-Limit"], refused["X-Quota-Remaining"]) == ("10000", "0")
    assert int(refused["Retry-After"]) == int(refused["X-Quota-Reset"]) > 0
    assert not BatchJob.objects.exists()
    assert used(f"o{tenant_a.organization.id}") == 10_000


def test_a_batch_job_reserves_its_rows_and_keeps_what_it_delivered(tenant_a, named, settings, django_capture_on_commit_callbacks):
    settings.BATCH_CHUNK_ROWS = 1000
    set_org_quota(tenant_a, 6_000)
    submitted = submit(tenant_a, csv_bytes(iris_rows(5_000)))
    assert submitted.status_code == 202, submitted.content
    org = f"o{tenant_a.organization.id}"
    assert used(org) == 5_000  # reserved: a second job of 5 000 rows does not fit meanwhile
    assert submit(tenant_a, csv_bytes(iris_rows(5_000))).status_code == 429

    with django_capture_on_commit_callbacks(execute=True):
        job = run_job(submitted.json()["id"])

    assert (job.status, job.rows_done, job.quota_rows_reserved) == ("succeeded", 5_000, 5_000)
    assert used(org) == 5_000
    assert batch_services.settle_quota(job_id=job.id) == 0  # settled once


def test_a_cancelled_batch_job_gives_its_rows_back(tenant_a, named, django_capture_on_commit_callbacks):
    set_org_quota(tenant_a, 6_000)
    job_id = submit(tenant_a, csv_bytes(iris_rows(5_000))).json()["id"]
    assert used(f"o{tenant_a.organization.id}") == 5_000

    with django_capture_on_commit_callbacks(execute=True):
        assert tenant_a.key_client().post(f"/api/v1/batch-jobs/{job_id}/cancel").status_code == 200

    assert used(f"o{tenant_a.organization.id}") == 0
    assert submit(tenant_a, csv_bytes(iris_rows(5_000))).status_code == 202


def test_rows_a_batch_job_skipped_are_given_back(tenant_a, named, django_capture_on_commit_callbacks):
    set_org_quota(tenant_a, 100)
    good = [",".join(repr(float(v)) for v in row) for row in np.round(iris_rows(8), 2)]
    content = ("\n".join([",".join(f.IRIS_FEATURES), *good[:4], "x,1,2,3", "1,y,2,3", *good[4:]]) + "\n").encode()
    job_id = submit(tenant_a, content, on_error="skip").json()["id"]
    assert used(f"o{tenant_a.organization.id}") == 10

    with django_capture_on_commit_callbacks(execute=True):
        job = run_job(job_id)

    assert (job.status, job.rows_done, job.rows_failed) == ("succeeded", 10, 2)
    assert used(f"o{tenant_a.organization.id}") == 8
