import os

import orjson
import pytest
from django.core.cache import cache
from sklearn.dummy import DummyClassifier

from accounts.models import ApiKey, Organization
from inference import records
from inference.models import PredictionRecord
from registry.models import RegisteredModel
from registry.tests import factories as f

pytestmark = pytest.mark.django_db
ROW = f.IRIS_ROW


@pytest.fixture
def iris(tenant_a):
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, promote=True)
    return model


def predict(client, body, path="/api/v1/models/acme/iris/predict"):
    return client.post(path, body, format="json")


def test_predict_answers_with_predictions_classes_and_headers(tenant_a, iris):
    response = predict(tenant_a.key_client(), {"inputs": [ROW], "parameters": {"probabilities": True}})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] == "acme/iris"
    assert body["version"] == 1
    assert body["variant"] is None
    assert body["predictions"] == [0]
    assert body["classes"] == [0, 1, 2]
    assert len(body["probabilities"][0]) == 3 and body["probabilities"][0][0] > 0.9
    assert body["cache_hit"] is False
    assert body["id"].startswith("prd_") and len(body["id"]) == 30
    assert response["X-Cache"] == "MISS"
    spans = [part.split(";")[0] for part in response["Server-Timing"].split(", ")]
    assert spans == ["auth", "resolve", "validate", "limit", "cache", "predict", "record"]


def test_same_input_is_a_cache_hit(tenant_a, iris):
    client = tenant_a.key_client()
    first = predict(client, {"inputs": [ROW]})
    second = predict(client, {"inputs": [ROW]})
    assert first["X-Cache"] == "MISS"
    assert second["X-Cache"] == "HIT"
    assert second.json()["cache_hit"] is True
    assert second.json()["predictions"] == first.json()["predictions"]
    assert second.json()["id"] != first.json()["id"]
    with_proba = predict(client, {"inputs": [ROW], "parameters": {"probabilities": True}})
    assert with_proba["X-Cache"] == "MISS"  # the options are part of the key


def test_rows_as_objects_and_a_single_object(tenant_a):
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="named")
    f.create_version(model, f.iris_frame_model(), promote=True)
    client = tenant_a.key_client()
    record = dict(zip(reversed(f.IRIS_FEATURES), reversed(ROW), strict=True))  # order does not matter
    many = predict(client, {"inputs": [record, record]}, "/api/v1/models/acme/named/predict")
    assert many.status_code == 200, many.content
    assert many.json()["predictions"] == [0, 0]
    one = predict(client, {"inputs": record}, "/api/v1/models/acme/named/predict")
    assert one.json()["predictions"] == [0]


def test_explicit_version_predict(tenant_a, iris):
    f.create_version(iris, DummyClassifier(strategy="constant", constant=2).fit(*f.iris_data()))
    response = predict(tenant_a.key_client(), {"inputs": [ROW]}, "/api/v1/models/acme/iris/versions/2/predict")
    assert response.json()["version"] == 2
    assert response.json()["predictions"] == [2]


@pytest.mark.parametrize(
    "body, status, row, column, fragment",
    [
        pytest.param({"inputs": [ROW, [1.0, 2.0]]}, 400, 1, "*", "expected 4 values, got 2", id="short-row"),
        pytest.param(
            {"inputs": [[5.1, "wide", 1.4, 0.2]]},
            400,
            0,
            "f1",
            "expected a number, got the string 'wide'",
            id="string-for-number",
        ),
        pytest.param(
            {"inputs": [[5.1, True, 1.4, 0.2]]}, 400, 0, "f1", "expected a number, got the boolean true", id="boolean-for-number"
        ),
        pytest.param({"inputs": [ROW, [5.1, None, 1.4, 0.2]]}, 400, 1, "f1", "missing value", id="null-not-allowed"),
        pytest.param({"inputs": [{"f0": 1, "f1": 2, "f2": 3}]}, 400, 0, "f3", "missing feature", id="missing-named-feature"),
        pytest.param(
            {"inputs": [{"f0": 1, "f1": 2, "f2": 3, "f3": 4, "f9": 5}]}, 400, 0, "f9", "unknown feature", id="unknown-feature"
        ),
        pytest.param({"inputs": [[5.1, [3.5], 1.4, 0.2]]}, 400, 0, "f1", "nested list", id="nested-value"),
    ],
)
def test_bad_rows_name_row_and_column(tenant_a, iris, body, status, row, column, fragment):
    response = predict(tenant_a.key_client(), body)
    assert response.status_code == status
    problem = response.json()
    assert problem["code"] == "invalid_input"
    assert problem["errors"][0]["row"] == row
    assert problem["errors"][0]["column"] == column
    assert fragment in problem["errors"][0]["message"]


@pytest.mark.parametrize(
    "body, code, field",
    [
        pytest.param({"inputs": []}, "invalid_input", "inputs", id="empty-batch"),
        pytest.param({}, "invalid_input", "inputs", id="no-inputs"),
        pytest.param({"inputs": [ROW], "colour": 1}, "invalid_input", "colour", id="unknown-field"),
        pytest.param(
            {"inputs": [ROW], "parameters": {"threshold": 0.5}}, "invalid_input", "parameters.threshold", id="unknown-parameter"
        ),
        pytest.param(
            {"inputs": [ROW], "parameters": {"explain": "yes"}}, "invalid_input", "parameters.explain", id="explain-not-boolean"
        ),
        pytest.param(
            {"inputs": [ROW], "parameters": {"probabilities": "yes"}},
            "invalid_input",
            "parameters.probabilities",
            id="probabilities-not-boolean",
        ),
        pytest.param([ROW], "invalid_input", "body", id="body-not-object"),
    ],
)
def test_bad_bodies_name_the_field(tenant_a, iris, body, code, field):
    response = predict(tenant_a.key_client(), body)
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert response.json()["errors"][0]["field"] == field


def test_malformed_json_is_400(tenant_a, iris):
    response = tenant_a.key_client().post("/api/v1/models/acme/iris/predict", b'{"inputs": [[1,', content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_body"


def test_too_many_rows_is_413(tenant_a, iris, settings):
    settings.MAX_ROWS_PER_REQUEST = 3
    response = predict(tenant_a.key_client(), {"inputs": [ROW] * 4})
    assert response.status_code == 413
    assert "limit of 3" in response.json()["detail"]


def test_body_over_the_limit_is_413(tenant_a, iris, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 200
    response = predict(tenant_a.key_client(), {"inputs": [ROW] * 20})
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_integer_columns_accept_whole_floats_only(tenant_a):
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="counts")
    version = f.create_version(model, f.regression_model(), promote=True)
    version.signature = {
        "inputs": [{"name": n, "type": "long"} for n in ("a", "b", "c")],
        "source": "input_example",
        "named": True,
    }
    version.save(update_fields=["signature"])
    client = tenant_a.key_client()
    ok = predict(client, {"inputs": [[1.0, 2, 3.0]]}, "/api/v1/models/acme/counts/predict")
    assert ok.status_code == 200, ok.content
    bad = predict(client, {"inputs": [[1.5, 2, 3]]}, "/api/v1/models/acme/counts/predict")
    assert bad.status_code == 400
    assert bad.json()["errors"][0] == {"row": 0, "column": "a", "message": "expected an integer, got 1.5"}


def test_model_without_production_version_is_404_with_reason(tenant_a):
    from accounts.principals import Caller
    from registry import services

    services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="empty")
    response = predict(tenant_a.key_client(), {"inputs": [ROW]}, "/api/v1/models/acme/empty/predict")
    assert response.status_code == 404
    assert "no production version" in response.json()["detail"]


def test_key_without_predict_scope_is_403(tenant_a, iris):
    response = tenant_a.jwt_client().post("/api/v1/orgs/acme/api-keys", {"name": "ro", "scopes": ["read"]}, format="json")
    client = tenant_a.key_client(response.json()["key"])
    assert predict(client, {"inputs": [ROW]}).status_code == 403


def test_jwt_member_can_predict(tenant_a, iris):
    response = predict(tenant_a.jwt_client(), {"inputs": [ROW]})
    assert response.status_code == 200
    assert response.json()["predictions"] == [0]


def test_unauthenticated_is_401(api_client, iris):
    response = predict(api_client, {"inputs": [ROW]})
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


# --- cache correctness across releases ---------------------------------------------------


def test_promotion_and_rollback_never_serve_another_versions_answer(tenant_a, iris, django_capture_on_commit_callbacks):
    from accounts.principals import Caller
    from registry import services

    client = tenant_a.key_client()
    assert predict(client, {"inputs": [ROW]}).json()["predictions"] == [0]
    assert predict(client, {"inputs": [ROW]})["X-Cache"] == "HIT"
    v2 = f.create_version(iris, DummyClassifier(strategy="constant", constant=2).fit(*f.iris_data()))
    with django_capture_on_commit_callbacks(execute=True):
        services.set_stage(caller=Caller(user=tenant_a.user), version=v2, stage="production")
    after = predict(client, {"inputs": [ROW]})
    assert (after.json()["version"], after.json()["predictions"], after["X-Cache"]) == (2, [2], "MISS")
    with django_capture_on_commit_callbacks(execute=True):
        services.rollback(caller=Caller(user=tenant_a.user), model=RegisteredModel.objects.get(pk=iris.pk))
    back = predict(client, {"inputs": [ROW]})
    assert (back.json()["version"], back.json()["predictions"]) == (1, [0])


def test_promotion_in_another_process_is_seen_on_the_next_request(tenant_a, iris):
    """Another process promotes: only the database and the Redis generation change here."""
    from django.db import transaction

    from inference.limits import ROUTE_GENERATION_KEY
    from platform_site.redis_client import get_redis
    from registry.models import ModelVersion

    client = tenant_a.key_client()
    assert predict(client, {"inputs": [ROW]}).json()["version"] == 1
    v2 = f.create_version(iris, DummyClassifier(strategy="constant", constant=1).fit(*f.iris_data()))
    with transaction.atomic():
        RegisteredModel.objects.filter(pk=iris.pk).update(production_version=v2)
        ModelVersion.objects.filter(pk=v2.pk).update(stage="production")
    stale = predict(client, {"inputs": [ROW]})  # this process's route is still cached
    assert (stale.json()["version"], stale["X-Cache"]) == (1, "HIT")
    get_redis().incr(ROUTE_GENERATION_KEY)
    # The limit's round trip read version 1's cached answer for this input; it must not be served.
    fresh = predict(client, {"inputs": [ROW]})
    assert (fresh.json()["version"], fresh.json()["predictions"], fresh["X-Cache"]) == (2, [1], "MISS")
    again = predict(client, {"inputs": [ROW]})
    assert (again.json()["version"], again.json()["predictions"], again["X-Cache"]) == (2, [1], "HIT")


# --- the hot path's budget ---------------------------------------------------------------


def test_warm_predict_makes_no_database_query(tenant_a, iris, django_assert_num_queries, settings):
    settings.API_KEY_LAST_USED_WRITE_SECONDS = 3600
    client = tenant_a.key_client()
    predict(client, {"inputs": [ROW]})
    with django_assert_num_queries(0):
        assert predict(client, {"inputs": [[6.0, 3.0, 4.8, 1.8]]}).status_code == 200
        assert predict(client, {"inputs": [[6.0, 3.0, 4.8, 1.8]]})["X-Cache"] == "HIT"


# --- prediction records ------------------------------------------------------------------


def test_record_is_in_the_stream_before_the_response_and_drained_once(tenant_a, iris):
    from platform_site.redis_client import get_redis

    response = predict(tenant_a.key_client(), {"inputs": [ROW], "unit_id": "user-7"})
    assert get_redis().xlen(records.STREAM) == 1  # a web crash now loses nothing
    assert PredictionRecord.objects.count() == 0
    assert records.drain_stream() == 1
    record = PredictionRecord.objects.get(prediction_id=response.json()["id"])
    assert (record.rows, record.protocol, record.unit_id, record.cache_hit, record.status) == (1, "native", "user-7", False, 200)
    assert record.inputs == [ROW]
    assert record.outputs == [0]
    assert record.api_key_id == tenant_a.api_key_id
    assert records.drain_stream() == 0
    assert PredictionRecord.objects.count() == 1


def test_records_read_by_a_crashed_worker_are_claimed_and_stored_once(tenant_a, iris, settings):
    from platform_site.redis_client import get_redis

    settings.RECORD_CLAIM_IDLE_SECONDS = 0
    for _ in range(3):
        predict(tenant_a.key_client(), {"inputs": [ROW]})
    client = get_redis()
    client.xgroup_create(records.STREAM, records.GROUP, id="0", mkstream=True)
    taken = client.xreadgroup(records.GROUP, "crashed-worker", {records.STREAM: ">"}, count=2)
    assert len(taken[0][1]) == 2  # read, never acknowledged: the worker died
    assert records.drain_stream() == 3
    assert PredictionRecord.objects.count() == 3
    records.ingest_records(
        [
            {
                **{"id": PredictionRecord.objects.first().prediction_id},
                "ts": 0,
                "org": 1,
                "model": 1,
                "version": 1,
                "proto": "native",
                "rows": 1,
                "lat": 1.0,
                "hit": False,
            }
        ]
    )
    assert PredictionRecord.objects.count() == 3  # a batch inserted twice is stored once


def test_failed_predictions_are_recorded_with_their_code(tenant_a, iris):
    predict(tenant_a.key_client(), {"inputs": [[1.0]]})
    records.drain_stream()
    record = PredictionRecord.objects.get()
    assert (record.status, record.error_code, record.rows) == (400, "invalid_input", 0)


# --- Redis down --------------------------------------------------------------------------


@pytest.fixture
def redis_down(settings):
    from platform_site import redis_client

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.REDIS_SOCKET_TIMEOUT = 0.05
    redis_client.reset()
    yield
    redis_client.reset()


def test_predictions_are_served_uncached_when_redis_is_down(tenant_a, iris, redis_down):
    ApiKey.objects.filter(id=tenant_a.api_key_id).update(rate_limit_per_minute=1)
    client = tenant_a.key_client()
    for _ in range(3):  # limits fail open: three requests against a limit of one
        response = predict(client, {"inputs": [ROW]})
        assert response.status_code == 200
        assert response["X-Cache"] == "MISS"
        assert "X-RateLimit-Limit" not in response
    assert records.flush_local_buffer() == 3
    assert PredictionRecord.objects.count() == 3


# --- limits ------------------------------------------------------------------------------


def test_rate_limit_per_key_answers_429_with_headers(tenant_a, iris):
    ApiKey.objects.filter(id=tenant_a.api_key_id).update(rate_limit_per_minute=2)
    client = tenant_a.key_client()
    first = predict(client, {"inputs": [ROW]})
    assert (first["X-RateLimit-Limit"], first["X-RateLimit-Remaining"]) == ("2", "1")
    assert predict(client, {"inputs": [ROW]})["X-RateLimit-Remaining"] == "0"
    refused = predict(client, {"inputs": [ROW]})
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert refused["X-RateLimit-Remaining"] == "0"


def test_invalid_bodies_count_against_the_limit_and_a_refusal_comes_first(tenant_a, iris):
    """The body is checked before the limit's round trip, but its verdict is given after it."""
    ApiKey.objects.filter(id=tenant_a.api_key_id).update(rate_limit_per_minute=2)
    client = tenant_a.key_client()
    assert predict(client, {"inputs": [[1.0, 2.0]]}).status_code == 400
    assert predict(client, {"inputs": [["x", 2.0, 3.0, 4.0]]}).status_code == 400
    assert predict(client, {"inputs": [ROW]}).status_code == 429
    refused = predict(client, {"inputs": [[1.0, 2.0]]})
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"


@pytest.fixture
def replies_with_next_request(monkeypatch):
    """As in production: the test client does not send a request's record at once
    (platform_site/tests/dispatching.py does, for the other tests); it leaves with the next request."""
    from platform_site import redis_client

    monkeypatch.setattr(redis_client, "settle_pending", lambda: None)


def test_a_prediction_waits_for_one_redis_round_trip(tenant_a, iris, monkeypatch, replies_with_next_request):
    """The limit script (with the cache read) is the one round trip waited for. The record (and,
    on a miss, the answer to cache) is queued in the socket before the response and leaves with
    the next round trip, whose replies come back together; with no next request, within ~200 ms."""
    import time

    from platform_site import redis_client
    from platform_site.redis_client import get_redis

    client = tenant_a.key_client()
    assert predict(client, {"inputs": [ROW]})["X-Cache"] == "MISS"  # loads the script and the route
    calls = []
    hot = redis_client._HotConnection
    for name in ("send", "send_more", "read"):
        original = getattr(hot, name)
        monkeypatch.setattr(
            hot,
            name,
            lambda self, arg, _name=name, _original=original: (
                calls.append((_name, arg if _name == "read" else arg[0][0])) or _original(self, arg)
            ),
        )

    hit = predict(client, {"inputs": [ROW]})
    assert hit["X-Cache"] == "HIT"
    assert hit.json()["predictions"] == [0]
    # One transmission: the script; the first request's XADD, XLEN and SET replies are read with its own.
    assert calls == [("send", "EVALSHA"), ("read", 3), ("read", 1), ("send_more", "XADD")]
    assert get_redis().xlen(records.STREAM) == 1  # the hit's record is still in this process's socket
    calls.clear()
    assert predict(client, {"inputs": [[6.7, 3.0, 5.2, 2.3]]})["X-Cache"] == "MISS"
    assert calls == [("send", "EVALSHA"), ("read", 2), ("read", 1), ("send_more", "XADD")]
    assert get_redis().xlen(records.STREAM) == 2
    started = time.monotonic()
    while get_redis().xlen(records.STREAM) < 3 and time.monotonic() - started < 2:  # an idle worker's last record
        time.sleep(0.01)
    assert get_redis().xlen(records.STREAM) == 3 and time.monotonic() - started < 1
    assert [count for count, _ in redis_client._hot.connection.pending] == [3]  # XADD, XLEN and SET, read later
    records.flush_local_buffer()  # reads what is owed: nothing was refused
    assert not redis_client._hot.connection.pending
    assert records.drain_stream() == 3
    assert PredictionRecord.objects.count() == 3


def test_a_record_whose_reply_is_lost_is_kept_in_process_and_stored_once(tenant_a, iris, monkeypatch, replies_with_next_request):
    """The connection dies before the XADD's reply is read: the record may or may not be in the
    stream, so it is kept in process too, and the insert stores it once."""
    import redis

    from platform_site import redis_client

    client = tenant_a.key_client()
    first = predict(client, {"inputs": [ROW]})
    original = redis_client._HotConnection.read
    cut = []

    def cut_once(self, *args, **kwargs):  # what a Redis restart or a network cut does
        if not cut:
            cut.append(True)
            self.close()
            raise redis.ConnectionError("Connection closed by server.")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(redis_client._HotConnection, "read", cut_once)
    second = predict(client, {"inputs": [[6.7, 3.0, 5.2, 2.3]]})
    assert second.status_code == 200  # the limit fails open while the breaker is open
    assert cut and len(records._local_buffer().records) == 2  # the first (reply lost) and the second
    monkeypatch.undo()
    redis_client.reset()  # the breaker closes
    assert records.drain_stream() == 1  # the first did reach the stream
    assert records.flush_local_buffer() == 2
    ids = sorted(PredictionRecord.objects.values_list("prediction_id", flat=True))
    assert ids == sorted([first.json()["id"], second.json()["id"]])


@pytest.mark.parametrize(
    "settled", [False, True, "read"], ids=["record-still-queued", "record-delivered-then-dropped", "nothing-owed"]
)
def test_a_connection_redis_dropped_while_idle_is_replaced_not_failed_open(
    tenant_a, iris, monkeypatch, replies_with_next_request, settled
):
    """Replies owed by an idle connection are read before it is used again: if Redis dropped it
    (a restart, a failover, an idle timeout), the request goes on over a new connection and is
    counted, instead of failing open and opening the breaker. Either the queued record never
    left (it is kept in process), or it left, was answered, and then the connection died (the
    reply is read, and redis-py's ping before the send reconnects)."""
    import time

    from platform_site import redis_client
    from platform_site.redis_client import get_redis

    ApiKey.objects.filter(id=tenant_a.api_key_id).update(rate_limit_per_minute=100)
    client = tenant_a.key_client()
    first = predict(client, {"inputs": [ROW]})
    assert first["X-RateLimit-Remaining"] == "99"
    hot = redis_client._hot.connection
    assert hot.pending
    if settled:
        time.sleep(0.4)  # the kernel sends the queued record after ~200 ms; Redis answers it
    if settled == "read":
        hot.read_pending()  # the record's replies, in the socket by now
        assert not hot.pending
    host, port = hot.sock.getsockname()[:2]
    get_redis().client_kill(f"{host}:{port}")
    hot.last_used -= 3600  # idle for an hour
    second = predict(client, {"inputs": [[6.7, 3.0, 5.2, 2.3]]})
    assert second.status_code == 200
    assert second["X-RateLimit-Remaining"] == "98"  # counted in Redis, not failed open
    assert redis_client._open_until == 0.0
    monkeypatch.undo()
    records.flush_local_buffer()
    records.drain_stream()
    ids = sorted(PredictionRecord.objects.values_list("prediction_id", flat=True))
    assert ids == sorted([first.json()["id"], second.json()["id"]])


def test_a_record_sent_just_before_the_process_dies_is_in_the_stream(tmp_path):
    """send_later returns once the commands are in the socket: os._exit right after loses nothing."""
    import subprocess
    import sys

    from django.conf import settings

    from platform_site.redis_client import get_redis

    script = (
        "import os, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'platform_site.settings'); django.setup()\n"
        "from inference import records\n"
        "for i in range(50):\n"
        "    records.publish(record={'id': f'prd_dying{i:03d}', 'n': i})\n"
        "os._exit(9)\n"
    )
    env = {**os.environ, "REDIS_URL": settings.REDIS_URL}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=settings.BASE_DIR, timeout=60)
    assert done.returncode == 9
    entries = get_redis().xrange(records.STREAM)
    assert [orjson.loads(fields[b"r"])["n"] for _, fields in entries] == list(range(50))


def test_limits_survive_redis_forgetting_the_script(tenant_a, iris):
    from platform_site.redis_client import get_redis

    ApiKey.objects.filter(id=tenant_a.api_key_id).update(rate_limit_per_minute=5)
    client = tenant_a.key_client()
    assert predict(client, {"inputs": [ROW]})["X-RateLimit-Remaining"] == "4"
    get_redis().script_flush()  # a Redis restart or failover loses loaded scripts
    again = predict(client, {"inputs": [ROW]})
    assert again.status_code == 200
    assert again["X-RateLimit-Remaining"] == "3"


def test_a_record_the_stream_refuses_is_kept_in_process(tenant_a, iris):
    """An error reply to XADD (here: the stream key holds a string) loses no record."""
    from platform_site.redis_client import get_redis

    get_redis().set(records.STREAM, "not a stream")
    response = predict(tenant_a.key_client(), {"inputs": [ROW]})
    assert response.status_code == 200
    get_redis().delete(records.STREAM)
    assert records.flush_local_buffer() == 1
    assert PredictionRecord.objects.get().prediction_id == response.json()["id"]


def test_a_batch_the_database_refuses_stays_buffered_for_the_next_flush(tenant_a, iris, redis_down, monkeypatch):
    """Redis down, then the database fails one bulk insert: the records wait for the next flush."""
    responses = [predict(tenant_a.key_client(), {"inputs": [ROW]}) for _ in range(2)]
    original = records.ingest_records
    calls = []

    def failing_once(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return original(batch)

    monkeypatch.setattr(records, "ingest_records", failing_once)
    with pytest.raises(RuntimeError):
        records.flush_local_buffer()
    assert records.flush_local_buffer() == 2
    assert calls == [2, 2]
    stored = sorted(PredictionRecord.objects.values_list("prediction_id", flat=True))
    assert stored == sorted(r.json()["id"] for r in responses)


def test_organization_limit_applies_across_keys(tenant_a, iris):
    Organization.objects.filter(id=tenant_a.organization.id).update(rate_limit_per_minute=1)
    other = (
        tenant_a.jwt_client()
        .post("/api/v1/orgs/acme/api-keys", {"name": "b", "scopes": ["predict"]}, format="json")
        .json()["key"]
    )
    assert predict(tenant_a.key_client(), {"inputs": [ROW]}).status_code == 200
    refused = predict(tenant_a.key_client(other), {"inputs": [ROW]})
    assert refused.status_code == 429
    assert "organization" in refused.json()["detail"]


def test_monthly_quota_refuses_without_counting(tenant_a, iris):
    ApiKey.objects.filter(id=tenant_a.api_key_id).update(monthly_quota=2)
    client = tenant_a.key_client()
    assert [predict(client, {"inputs": [ROW]}).status_code for _ in range(4)] == [200, 200, 429, 429]
    refused = predict(client, {"inputs": [ROW]})
    assert refused.json()["code"] == "quota_exceeded"
    assert int(refused["Retry-After"]) > 0
    from platform_site.redis_client import get_redis

    month_keys = [k for k in get_redis().keys("mh:q:k*")]
    assert [int(get_redis().get(k)) for k in month_keys] == [2]


# --- feedback ----------------------------------------------------------------------------


def test_feedback_is_recorded_for_a_prediction(tenant_a, iris):
    from inference.models import Feedback

    client = tenant_a.key_client()
    prediction = predict(client, {"inputs": [ROW]}).json()["id"]
    created = client.post(f"/api/v1/predictions/{prediction}/feedback", {"label": 0}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["version"] == 1
    corrected = client.post(f"/api/v1/predictions/{prediction}/feedback", {"label": 1}, format="json")
    assert corrected.status_code == 200
    assert Feedback.objects.get().label == 1


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param({"label": 7}, "label", id="not-a-class"),
        pytest.param({"value": 0.5}, "value", id="value-for-classifier"),
        pytest.param({}, "label", id="neither"),
        pytest.param({"label": 0, "value": 1.0}, "label", id="both"),
        pytest.param({"label": [0]}, "label", id="not-a-scalar"),
        pytest.param({"label": True}, "label", id="boolean-for-integer-classes"),
        pytest.param({"label": "1"}, "label", id="string-for-integer-classes"),
    ],
)
def test_bad_feedback_is_refused(tenant_a, iris, body, field):
    client = tenant_a.key_client()
    prediction = predict(client, {"inputs": [ROW]}).json()["id"]
    response = client.post(f"/api/v1/predictions/{prediction}/feedback", body, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == field


def test_feedback_for_unknown_prediction_is_404(tenant_a, iris):
    response = tenant_a.key_client().post("/api/v1/predictions/prd_nope/feedback", {"label": 0}, format="json")
    assert response.status_code == 404


def test_metrics_count_predictions(tenant_a, iris, client, settings):
    predict(tenant_a.key_client(), {"inputs": [ROW]})
    settings.METRICS_TOKEN = "metrics-token"
    text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token").content.decode()
    assert 'modelhost_prediction_requests_total{model="iris",org="acme",protocol="native",variant="",version="1"}' in text
    assert "modelhost_prediction_latency_seconds_bucket" in text
    cache.clear()


# --- database down -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, content_type, shape",
    [
        pytest.param(
            "/api/v1/models/acme/iris/predict",
            {"inputs": [ROW]},
            "application/problem+json",
            {"type", "title", "status", "detail", "code", "service"},
            id="native",
        ),
        pytest.param(
            "/api/v1/models/acme/iris/invocations", {"inputs": [ROW]}, "application/json", {"error_code", "message"}, id="mlflow"
        ),
        pytest.param(
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]},
            "application/json",
            {"error"},
            id="v2",
        ),
    ],
)
def test_database_down_on_a_cold_route_is_503_in_each_protocols_shape(
    tenant_a, iris, monkeypatch, path, body, content_type, shape
):
    from django.db import OperationalError

    from inference import routing

    def down(*args):
        raise OperationalError("could not connect to server: Connection refused")

    authentication_warm = tenant_a.key_client()
    authentication_warm.get("/api/v1/me")  # the key is cached; the route is not
    monkeypatch.setattr(routing, "_load_model", down)
    response = authentication_warm.post(path, body, format="json")
    assert response.status_code == 503
    assert response["Content-Type"] == content_type
    assert set(response.json()) == shape
    assert "database is unavailable" in str(response.json())


def test_warm_predictions_survive_a_database_outage(tenant_a, iris, monkeypatch):
    """Keys, routes and models are in process memory: a warm path needs no database."""
    from django.db import OperationalError
    from django.db.backends.utils import CursorWrapper

    client = tenant_a.key_client()
    assert predict(client, {"inputs": [ROW]}).status_code == 200

    def down(*args, **kwargs):
        raise OperationalError("the database is gone")

    monkeypatch.setattr(CursorWrapper, "execute", down)
    response = predict(client, {"inputs": [[6.0, 3.0, 4.8, 1.8]]})
    assert response.status_code == 200
    assert response.json()["predictions"] == [2]


def test_a_linear_model_is_served_in_the_web_with_scikit_learns_answers_and_no_runner(tenant_a, iris):
    import numpy as np

    from inference.runners.client import address_for, ask_host
    from registry.tests.factories import iris_data, iris_model

    x, _ = iris_data()
    rows = np.vstack([x[::7], x[::11] * 1.5]).tolist()
    response = predict(tenant_a.key_client(), {"inputs": rows, "parameters": {"probabilities": True}})
    assert response.status_code == 200, response.content
    iris.refresh_from_db()
    assert iris.production_version.serving_path == "web"
    assert response.json()["predictions"] == iris_model().predict(np.array(rows)).tolist()
    assert response.json()["probabilities"] == iris_model().predict_proba(np.array(rows)).tolist()  # bit for bit
    status = ask_host(address_for(tenant_a.organization.id), {"op": "status"})
    assert [r for r in status["runners"] if r["org"] == tenant_a.organization.id] == []


def test_a_reply_that_does_not_come_in_time_is_a_timeout_and_the_connection_is_dropped(settings):
    """The hot connection keeps redis-py's socket timeout and its error classes."""
    import redis

    from platform_site import redis_client

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.2)
    try:
        assert redis_client.round_trip(client, ("PING",)) == [b"PONG"]
        with pytest.raises(redis.TimeoutError):
            redis_client.round_trip(client, ("BLPOP", "mh:test:never", 5))
        assert getattr(redis_client._hot, "connection", None) is None  # dropped, not reused mid-reply
        assert redis_client.round_trip(client, ("PING",)) == [b"PONG"]  # a new connection
    finally:
        redis_client.reset()
        client.close()
