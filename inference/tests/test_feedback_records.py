"""Feedback drains the record stream to find a fresh prediction; a refused feedback loses no record."""

from __future__ import annotations

import pytest

from inference import records
from inference.models import Feedback, PredictionRecord
from platform_site.redis_client import get_redis, settle_pending
from registry.tests import factories as f

ROW = f.IRIS_ROW


def _iris(tenant, *, name: str = "iris"):
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant.user), organization=tenant.organization, name=name)
    f.create_version(model, promote=True)
    return model


def _queued_predictions(tenant, *, count: int) -> list[str]:
    """Predict `count` times; the records stay in the Redis stream (nothing drained yet)."""
    client = tenant.key_client()
    ids = [
        client.post(f"/api/v1/models/{tenant.organization.slug}/iris/predict", {"inputs": [ROW]}, format="json").json()["id"]
        for _ in range(count)
    ]
    settle_pending()
    return ids


@pytest.fixture
def empty_stream():
    get_redis().delete(records.STREAM)
    yield
    get_redis().delete(records.STREAM)


@pytest.mark.parametrize(
    "prediction, body, status",
    [
        pytest.param("prd_unknown", {"label": 0}, 404, id="unknown-prediction"),
        pytest.param("own", {"label": 7}, 400, id="label-not-a-class"),
        pytest.param("own", {"value": 0.5}, 400, id="value-for-a-classifier"),
    ],
)
def test_refused_feedback_keeps_every_tenants_queued_records(
    transactional_db, tenant_a, tenant_b, empty_stream, prediction, body, status
):
    _iris(tenant_a)
    _iris(tenant_b)
    others = _queued_predictions(tenant_b, count=30)
    own = _queued_predictions(tenant_a, count=1)
    assert PredictionRecord.objects.count() == 0
    target = own[0] if prediction == "own" else prediction

    response = tenant_a.key_client().post(f"/api/v1/predictions/{target}/feedback", body, format="json")

    assert response.status_code == status, response.content
    records.drain_stream()
    stored = set(PredictionRecord.objects.values_list("prediction_id", flat=True))
    assert stored == set(others) | set(own)
    assert Feedback.objects.count() == 0


def test_feedback_finds_a_prediction_still_in_the_stream(transactional_db, tenant_a, empty_stream):
    _iris(tenant_a)
    [prediction] = _queued_predictions(tenant_a, count=1)
    response = tenant_a.key_client().post(f"/api/v1/predictions/{prediction}/feedback", {"label": 0}, format="json")
    assert response.status_code == 201, response.content
    assert Feedback.objects.get().prediction_id == prediction
    assert get_redis().xlen(records.STREAM) == 0


def test_stream_entries_stay_when_their_insert_fails(transactional_db, tenant_a, empty_stream, monkeypatch, settings):
    _iris(tenant_a)
    queued = _queued_predictions(tenant_a, count=5)

    def database_down(batch):
        raise RuntimeError("database unavailable")

    monkeypatch.setattr(records, "ingest_records", database_down)
    with pytest.raises(RuntimeError, match="database unavailable"):
        records.drain_stream()
    monkeypatch.undo()
    # The entries were read but not acknowledged: the next drain (after the claim delay) stores them.
    assert get_redis().xlen(records.STREAM) == 5
    settings.RECORD_CLAIM_IDLE_SECONDS = 0
    records.drain_stream()
    assert set(PredictionRecord.objects.values_list("prediction_id", flat=True)) == set(queued)


def test_ingestion_refuses_to_run_inside_another_transaction(transactional_db, tenant_a, empty_stream):
    from django.db import transaction

    _iris(tenant_a)
    _queued_predictions(tenant_a, count=3)
    with pytest.raises(RuntimeError, match="durable"):
        with transaction.atomic():
            records.drain_stream()
    assert get_redis().xlen(records.STREAM) == 3


# --- the stream's bound ------------------------------------------------------------------


def _record(tenant, model, n: int) -> dict:
    version = model.versions.get()
    return {
        "id": f"prd_bound_{n:06d}",
        "ts": 1_700_000_000 + n,
        "org": tenant.organization.id,
        "model": model.id,
        "version": version.id,
        "proto": "native",
        "rows": 1,
        "lat": 0.5,
        "hit": False,
        "in": [ROW],
        "out": [0],
    }


def test_records_past_the_stream_bound_are_spilled_and_stored_not_trimmed(
    transactional_db, tenant_a, empty_stream, settings, client
):
    from prometheus_client import REGISTRY

    from platform_site.redis_client import MAX_PENDING_SENDS

    def spilled() -> float:
        return REGISTRY.get_sample_value("modelhost_records_spilled_total") or 0.0

    settings.RECORD_STREAM_MAXLEN = 100
    settings.RECORD_STREAM_FULL_SECONDS = 60
    model = _iris(tenant_a)
    spilled_before = spilled()
    for n in range(300):
        records.publish(record=_record(tenant_a, model, n))
    settle_pending()

    waiting = get_redis().xlen(records.STREAM)
    # The bound, overshot by the records whose XLEN replies this thread had not read yet.
    assert 100 <= waiting <= 100 + MAX_PENDING_SENDS
    settings.METRICS_TOKEN = "metrics-token-of-this-test"
    scraped = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-of-this-test").content.decode().splitlines()
    assert f"modelhost_record_backlog {float(waiting)}" in scraped
    assert spilled() - spilled_before == 300 - waiting
    records.drain_stream()
    records.flush_local_buffer()
    assert PredictionRecord.objects.filter(prediction_id__startswith="prd_bound_").count() == 300
