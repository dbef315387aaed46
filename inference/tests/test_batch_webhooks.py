"""The completion webhook, delivered to a real HTTP server on a thread of this process."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from django.test import Client

from inference.batch import tasks, webhooks
from inference.models import BatchJob
from inference.tests.test_batch_api import csv_bytes, iris_rows, named, run_job, submit  # noqa: F401 - named is a fixture

pytestmark = pytest.mark.django_db


class Receiver:
    """An HTTP endpoint that answers the given statuses in turn (the last one repeats) and keeps what it got."""

    def __init__(self, statuses: list[int], headers: dict | None = None) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/batch"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made = []

    def make(statuses, **kwargs) -> Receiver:
        made.append(Receiver(statuses, **kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def allow_local(settings):
    settings.BATCH_WEBHOOK_ALLOW_PRIVATE_HOSTS = True


def finished_job_with_webhook(tenant, url: str) -> tuple[BatchJob, str]:
    response = submit(tenant, csv_bytes(iris_rows(120)), webhook=url)
    assert response.status_code == 202, response.content
    secret = response.json()["webhook_secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    job = run_job(response.json()["id"])
    assert job.status == "succeeded" and job.webhook_status == "pending"
    return job, secret


def test_backoff_doubles_up_to_the_cap(settings):
    settings.BATCH_WEBHOOK_BACKOFF_SECONDS = 10
    settings.BATCH_WEBHOOK_BACKOFF_MAX_SECONDS = 100
    assert [webhooks.backoff_seconds(n) for n in range(6)] == [10, 20, 40, 80, 100, 100]


@pytest.mark.usefixtures("named")
def test_completion_webhook_is_signed_and_retried_until_delivered(tenant_a, allow_local, receiver_factory):
    receiver = receiver_factory([500, 503, 204])
    job, secret = finished_job_with_webhook(tenant_a, receiver.url)
    tasks.send_batch_webhook.apply(args=(job.id,))
    assert len(receiver.received) == 3
    for attempt, (headers, body) in enumerate(receiver.received, start=1):
        assert webhooks.is_signed_by(body=body, secret=secret, signature=headers["x-modelhost-signature"])
        assert headers["x-modelhost-event"] == "batch_job.succeeded"
        assert headers["x-modelhost-delivery"] == f"{job.id}-{attempt}"
        assert headers["content-type"] == "application/json"
        event = orjson.loads(body)
        assert event["event"] == "batch_job.succeeded"
        assert event["job"]["id"] == job.id and event["job"]["rows_done"] == 120 and event["job"]["model"] == "acme/named"
        assert event["job"]["result"] == f"/api/v1/batch-jobs/{job.id}/result"
    job.refresh_from_db()
    assert (job.webhook_status, job.webhook_attempts, job.webhook_response_code, job.webhook_last_error) == (
        "delivered",
        3,
        204,
        "",
    )
    assert job.webhook_delivered_at is not None
    shown = tenant_a.key_client().get(f"/api/v1/batch-jobs/{job.id}").json()["webhook"]
    assert (shown["status"], shown["attempts"], shown["url"]) == ("delivered", 3, receiver.url)
    assert "webhook_secret" not in tenant_a.key_client().get(f"/api/v1/batch-jobs/{job.id}").json()
    tasks.send_batch_webhook.apply(args=(job.id,))  # a redelivered task sends nothing more
    assert len(receiver.received) == 3


@pytest.mark.usefixtures("named")
def test_webhook_gives_up_after_the_last_retry(tenant_a, allow_local, receiver_factory, settings):
    settings.BATCH_WEBHOOK_MAX_RETRIES = 2
    receiver = receiver_factory([500])
    job, _ = finished_job_with_webhook(tenant_a, receiver.url)
    tasks.send_batch_webhook.apply(args=(job.id,))
    assert len(receiver.received) == 3
    job.refresh_from_db()
    assert (job.webhook_status, job.webhook_attempts, job.webhook_response_code) == ("failed", 3, 500)
    assert job.webhook_last_error == "The endpoint answered 500."


@pytest.mark.usefixtures("named")
def test_redirects_are_not_followed(tenant_a, allow_local, receiver_factory, settings):
    settings.BATCH_WEBHOOK_MAX_RETRIES = 0
    target = receiver_factory([200])
    redirector = receiver_factory([302], headers={"Location": target.url})
    job, _ = finished_job_with_webhook(tenant_a, redirector.url)
    tasks.send_batch_webhook.apply(args=(job.id,))
    assert len(redirector.received) == 1 and target.received == []
    job.refresh_from_db()
    assert (job.webhook_status, job.webhook_response_code) == ("failed", 302)


@pytest.mark.usefixtures("named")
def test_private_addresses_are_refused_without_a_retry(tenant_a, receiver_factory, settings):
    settings.BATCH_WEBHOOK_ALLOW_PRIVATE_HOSTS = False
    receiver = receiver_factory([200])
    job, _ = finished_job_with_webhook(tenant_a, receiver.url)
    tasks.send_batch_webhook.apply(args=(job.id,))
    assert receiver.received == []
    job.refresh_from_db()
    assert (job.webhook_status, job.webhook_attempts) == ("failed", 1)
    assert job.webhook_last_error == "127.0.0.1 resolves to 127.0.0.1, which is not a public address."


@pytest.mark.usefixtures("named")
def test_cancelled_and_failed_jobs_notify_too(tenant_a, allow_local, receiver_factory):
    receiver = receiver_factory([200])
    response = submit(tenant_a, csv_bytes(iris_rows(5)), webhook=receiver.url)
    job_id = response.json()["id"]
    assert tenant_a.key_client().post(f"/api/v1/batch-jobs/{job_id}/cancel").status_code == 200
    tasks.send_batch_webhook.apply(args=(job_id,))
    bad = submit(tenant_a, b"sepal_length,sepal_width,petal_length,petal_width\n1,2,x,4\n", webhook=receiver.url)
    run_job(bad.json()["id"])
    tasks.send_batch_webhook.apply(args=(bad.json()["id"],))
    events = [orjson.loads(body) for _, body in receiver.received]
    assert [(e["event"], e["job"]["id"]) for e in events] == [
        ("batch_job.cancelled", job_id),
        ("batch_job.failed", bad.json()["id"]),
    ]
    assert events[1]["job"]["errors"] == [
        {"row": 0, "column": "petal_length", "message": "expected a number, got the string 'x'"}
    ]
    assert events[1]["job"]["result"] is None


@pytest.mark.usefixtures("named")
def test_no_webhook_no_delivery(tenant_a):
    job = run_job(submit(tenant_a, csv_bytes(iris_rows(5))).json()["id"])
    assert job.webhook_status == ""
    tasks.send_batch_webhook.apply(args=(job.id,))
    job.refresh_from_db()
    assert job.webhook_attempts == 0


@pytest.mark.usefixtures("named")
def test_each_attempt_is_in_the_organizations_delivery_log_and_on_the_job_page(
    tenant_a, tenant_b, allow_local, receiver_factory, settings
):
    settings.BATCH_WEBHOOK_MAX_RETRIES = 1
    target = receiver_factory([200])
    redirector = receiver_factory([302], headers={"Location": target.url})
    job, _ = finished_job_with_webhook(tenant_a, redirector.url)
    tasks.send_batch_webhook.apply(args=(job.id,))

    response = tenant_a.key_client().get(f"/api/v1/orgs/acme/webhook-deliveries?subject=batch_job:{job.id}")
    assert response.status_code == 200, response.content
    attempts = response.json()["results"]
    assert [(a["event"], a["delivery_id"], a["status_code"], a["is_delivered"]) for a in attempts] == [
        ("batch_job.succeeded", f"{job.id}-2", 302, False),
        ("batch_job.succeeded", f"{job.id}-1", 302, False),
    ]
    assert attempts[0]["error"] == "The endpoint answered 302; redirects are not followed."
    assert attempts[0]["url"] == redirector.url
    # Another organization sees none of them, and acme's log answers it as a missing one.
    assert tenant_b.key_client().get("/api/v1/orgs/globex/webhook-deliveries").json()["results"] == []
    foreign = tenant_b.key_client().get("/api/v1/orgs/acme/webhook-deliveries")
    missing = tenant_b.key_client().get("/api/v1/orgs/nobody/webhook-deliveries")
    assert foreign.status_code == missing.status_code == 404 and foreign.content == missing.content

    client = Client()
    client.force_login(tenant_a.user)
    page = client.get(f"/models/acme/named/batch-jobs/{job.id}/").content.decode()
    assert "Failed, 2 attempts, last answer 302: The endpoint answered 302; redirects are not followed." in page
