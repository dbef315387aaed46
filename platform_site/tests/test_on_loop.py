"""platform_site.on_loop: the predictions a web worker's event loop answers itself.

Each test calls the entry point's `on_loop` as platform_site.rsgi does, inside a running
asyncio loop, so Django's own check refuses any query that was not made to leave the loop
first (SynchronousOnlyOperation would turn into a 500 and fail the test).
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

from inference.hotpath import COUNTED
from inference.limits import ROUTE_GENERATION_KEY
from platform_site.on_loop import LeaveTheLoop, answer_on_loop, on_event_loop
from platform_site.redis_client import get_redis
from platform_site.tests.test_dispatch import call, environ
from platform_site.wsgi import application
from registry.tests import factories as f

THROUGH_WSGI = pytest.mark.django_db(transaction=True)
IRIS = "/api/v1/models/acme/iris/predict"


def on_the_loop(env: dict) -> tuple[int, dict, bytes] | None:
    """What the event loop answers (None: it hands the request to a thread), as platform_site.rsgi calls it."""
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = int(status.split()[0]), dict(headers)

    async def run():
        assert asyncio.get_running_loop() is not None
        return await answer_on_loop(application.on_loop, env, start_response)

    result = asyncio.run(run())
    if result is None:
        return None
    return seen["status"], seen["headers"], b"".join(result)


def predict_env(row, key, path=IRIS, **extra):
    return environ(path, body=orjson.dumps({"inputs": [row], **extra}), X_API_KEY=key)


def remaining(headers: dict) -> int:
    return int(headers["X-RateLimit-Remaining"])


@pytest.fixture
def iris(tenant_a):
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, promote=True)
    return model


@THROUGH_WSGI
def test_a_warm_linear_prediction_is_answered_on_the_loop_as_a_thread_answers_it(tenant_a, iris):
    status, first, body = call(predict_env(f.IRIS_ROW, tenant_a.api_key))  # a thread: the key and route are loaded
    assert status == 200, body
    row = [6.3, 3.3, 6.0, 2.5]
    answered = on_the_loop(predict_env(row, tenant_a.api_key, parameters={"probabilities": True}))
    assert answered is not None
    status, headers, body = answered
    _, _, by_thread = call(predict_env(row, tenant_a.api_key, parameters={"probabilities": True}))
    assert status == 200, body
    payload, expected = orjson.loads(body), orjson.loads(by_thread)
    assert payload["predictions"] == expected["predictions"] == [2]
    assert payload["probabilities"] == expected["probabilities"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    assert remaining(headers) == remaining(first) - 1  # counted once, like any request
    assert not on_event_loop()


@THROUGH_WSGI
def test_a_key_or_route_this_process_does_not_hold_goes_to_a_thread_uncounted(tenant_a, iris):
    assert on_the_loop(predict_env(f.IRIS_ROW, tenant_a.api_key)) is None  # nothing cached yet
    status, headers, body = call(predict_env(f.IRIS_ROW, tenant_a.api_key))
    assert status == 200, body
    limit = int(headers["X-RateLimit-Limit"])
    assert remaining(headers) == limit - 1  # the loop's look counted nothing


@THROUGH_WSGI
def test_a_step_that_needs_a_query_leaves_the_loop_before_the_count(tenant_a, iris, monkeypatch):
    from accounts.authentication import forget_cached_keys

    call(predict_env(f.IRIS_ROW, tenant_a.api_key))
    forget_cached_keys()  # the key must be read again: a query
    monkeypatch.setattr(application, "computed_here", lambda *args: True)  # as if the look were wrong
    env = predict_env(f.IRIS_ROW, tenant_a.api_key)
    with pytest.raises(LeaveTheLoop):
        on_the_loop(env)
    assert COUNTED not in env
    env["wsgi.input"].seek(0)  # as platform_site.rsgi rewinds it
    status, headers, body = call(env)
    assert status == 200, body
    assert remaining(headers) == int(headers["X-RateLimit-Limit"]) - 2  # the first call and this one, once


@THROUGH_WSGI
def test_a_model_a_runner_computes_is_never_predicted_on_the_loop(tenant_a, monkeypatch):
    from accounts.principals import Caller
    from inference.runners import client as runners
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="forest")
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(*load_iris(return_X_y=True))
    f.create_version(model, forest, promote=True)
    path = "/api/v1/models/acme/forest/predict"
    status, first, body = call(predict_env(f.IRIS_ROW, tenant_a.api_key, path))
    assert status == 200, body
    assert on_the_loop(predict_env(f.IRIS_ROW, tenant_a.api_key, path)) is None  # the look says: a runner

    monkeypatch.setattr(application, "computed_here", lambda *args: True)
    asked = []
    monkeypatch.setattr(runners, "_exchange", lambda *args, **kwargs: asked.append(args))
    env = predict_env([6.3, 3.3, 6.0, 2.5], tenant_a.api_key, path)
    with pytest.raises(LeaveTheLoop):
        on_the_loop(env)
    assert asked == []  # no runner was asked from the loop
    monkeypatch.undo()
    env["wsgi.input"].seek(0)
    status, headers, body = call(env)
    assert status == 200, body
    assert orjson.loads(body)["predictions"] == forest.predict([[6.3, 3.3, 6.0, 2.5]]).tolist()
    assert remaining(headers) == remaining(first) - 1


@THROUGH_WSGI
def test_a_route_that_changed_under_a_loop_request_is_resolved_on_a_thread_and_counted_once(tenant_a, iris):
    call(predict_env(f.IRIS_ROW, tenant_a.api_key))
    _, first, _ = call(predict_env([5.0, 3.0, 1.5, 0.2], tenant_a.api_key))  # this process has noted the generation
    get_redis().incr(ROUTE_GENERATION_KEY)  # another process promoted something
    env = predict_env([6.3, 3.3, 6.0, 2.5], tenant_a.api_key)
    with pytest.raises(LeaveTheLoop):
        on_the_loop(env)
    assert COUNTED in env  # the loop counted it, and hands the count over
    env["wsgi.input"].seek(0)
    status, headers, body = call(env)
    assert status == 200, body
    assert orjson.loads(body)["predictions"] == [2]
    assert COUNTED not in env
    assert remaining(headers) == remaining(first) - 1  # counted once, by the loop


@THROUGH_WSGI
def test_a_jwt_an_explanation_and_a_v2_request_take_the_right_path(tenant_a, iris):
    call(predict_env(f.IRIS_ROW, tenant_a.api_key))
    jwt = environ(IRIS, body=orjson.dumps({"inputs": [f.IRIS_ROW]}), AUTHORIZATION="Bearer eyJ.not.a.key")
    assert on_the_loop(jwt) is None

    explain = predict_env(f.IRIS_ROW, tenant_a.api_key, parameters={"explain": True})
    with pytest.raises(LeaveTheLoop):  # the reference data is a read from storage
        on_the_loop(explain)
    assert COUNTED not in explain

    v2 = environ(
        "/v2/models/iris/infer",
        body=orjson.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": f.IRIS_ROW}]}),
        X_API_KEY=tenant_a.api_key,
    )
    answered = on_the_loop(v2)
    assert answered is not None and answered[0] == 200, answered
    assert orjson.loads(answered[2])["outputs"][0]["data"] == [0]


@THROUGH_WSGI
def test_predictions_the_loop_answers_at_once_each_get_their_own_answer_and_count(tenant_a, iris):
    """Each waits for its Redis round trip suspended (platform_site.on_loop), the loop going on
    with the others meanwhile; the replies on the loop's one connection reach the right request."""
    from sklearn.datasets import load_iris as iris_data

    call(predict_env(f.IRIS_ROW, tenant_a.api_key))
    _, first, _ = call(predict_env([5.0, 3.0, 1.5, 0.2], tenant_a.api_key))
    rows = [list(map(float, row)) for row in iris_data().data[::15]]  # 10 rows of all three species
    answers = {}

    async def run():
        async def one(n, row):
            def start_response(status, headers, exc_info=None):
                answers[n] = (int(status.split()[0]), dict(headers))

            body = await answer_on_loop(application.on_loop, predict_env(row, tenant_a.api_key), start_response)
            answers[n] += (orjson.loads(b"".join(body)),)

        await asyncio.gather(*(one(n, row) for n, row in enumerate(rows)))

    asyncio.run(run())
    assert all(status == 200 for status, _, _ in answers.values()), answers
    for n, row in enumerate(rows):
        _, _, expected = call(predict_env(row, tenant_a.api_key))
        assert answers[n][2]["predictions"] == orjson.loads(expected)["predictions"], (n, row)
    seen = sorted(remaining(headers) for _, headers, _ in answers.values())
    assert seen == list(range(remaining(first) - len(rows), remaining(first)))  # each counted once
    assert len({payload["id"] for _, _, payload in answers.values()}) == len(rows)
