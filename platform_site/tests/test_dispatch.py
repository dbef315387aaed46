"""platform_site.wsgi: prediction paths straight to their views, everything else through Django."""
from __future__ import annotations

import io

import orjson
import pytest
from django.urls import resolve

from platform_site.dispatch import PredictionDispatcher
from platform_site.wsgi import application
from registry.tests import factories as f

ROW = f.IRIS_ROW
# Tests that call the real entry point commit their data: it sends request_started and
# request_finished, whose close_old_connections would end a test's open transaction.
THROUGH_WSGI = pytest.mark.django_db(transaction=True)


def environ(path: str, *, method: str = "POST", body: bytes = b"", **headers) -> dict:
    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    env.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    return env


def call(env: dict, app=application) -> tuple[int, dict, bytes]:
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = int(status.split()[0]), dict(headers)

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):  # as a WSGI server does
            result.close()
    return seen["status"], seen["headers"], body


@pytest.fixture
def iris(tenant_a):
    from accounts.principals import Caller
    from registry import services

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, promote=True)
    return model


FAST = [
    ("/api/v1/models/acme/iris/predict", "predict"),
    ("/api/v1/models/acme/iris/versions/3/predict", "predict-version"),
    ("/api/v1/models/acme/iris-2_b/invocations", "invocations"),
    ("/api/v1/models/acme/iris/versions/12/invocations", "invocations-version"),
    ("/v2/models/iris/infer", "v2-infer"),
    ("/v2/models/iris/versions/1/infer", "v2-infer-version"),
]


@pytest.mark.parametrize("path, name", FAST)
def test_every_fast_path_is_the_view_the_url_configuration_names(path, name):
    dispatcher = PredictionDispatcher(django_app=None)
    match = dispatcher.fast_path(environ(path))
    assert match is not None
    resolved = resolve(path)
    assert resolved.url_name == name
    number = match["number"] or match["v2number"]
    action = "infer" if match["v2model"] else match["action"]
    view, view_name = dispatcher.views[(action, number is not None)]
    assert (view, view_name) == (resolved.func, name)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param(environ("/api/v1/models/acme/iris/predict", method="GET"), id="GET"),
        pytest.param(environ("/api/v1/models/acme/iris/predict/"), id="trailing-slash"),
        pytest.param(environ("/api/v1/models/acme/iris/versions/x/predict"), id="not-a-number"),
        pytest.param(environ("/api/v1/models/acme/iris"), id="model-page"),
        pytest.param(environ("/v2/models/iris/ready"), id="v2-ready"),
        pytest.param(environ("/api/v1/models/acme/iris/predict", COOKIE="csrftoken=a; sessionid=abc"), id="browser-session"),
    ],
)
def test_other_requests_take_the_full_django_stack(env):
    assert PredictionDispatcher(django_app=None).fast_path(env) is None


@THROUGH_WSGI
def test_a_prediction_through_the_wsgi_entry_point(tenant_a, iris):
    from django_prometheus.middleware import Metrics

    metrics = Metrics.get_instance()
    by_view = metrics.requests_by_view_transport_method.labels(view="predict", transport="http", method="POST")
    by_status = metrics.responses_by_status.labels(status="200")
    before = by_view._value.get(), by_status._value.get()

    status, headers, body = call(environ("/api/v1/models/acme/iris/predict", body=orjson.dumps({"inputs": [ROW]}), X_API_KEY=tenant_a.api_key))

    assert status == 200, body
    assert orjson.loads(body)["predictions"] == [0]
    assert headers["X-Cache"] == "MISS" and "predict;dur=" in headers["Server-Timing"]
    # The security middleware's headers, as on every other response.
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    # The django_http_* series the autoscaler, alerts and dashboards read.
    assert (by_view._value.get(), by_status._value.get()) == (before[0] + 1, before[1] + 1)


@THROUGH_WSGI
def test_errors_keep_their_protocol_shape_and_are_counted(tenant_a, iris):
    from django_prometheus.middleware import Metrics

    by_status = Metrics.get_instance().responses_by_status.labels(status="401")
    before = by_status._value.get()
    status, headers, body = call(environ("/v2/models/iris/infer", body=b"{}", X_API_KEY="mh_00000000_wrong"))
    assert status == 401
    assert set(orjson.loads(body)) == {"error"}
    assert by_status._value.get() == before + 1


@THROUGH_WSGI
def test_a_host_django_refuses_is_refused_the_same_way(tenant_a, iris):
    env = environ("/api/v1/models/acme/iris/predict", body=orjson.dumps({"inputs": [ROW]}), X_API_KEY=tenant_a.api_key)
    env["HTTP_HOST"] = "evil.example"
    status, _, _ = call(env)
    assert status == 400


@THROUGH_WSGI
def test_plain_http_is_redirected_when_https_is_required(tenant_a, iris, settings):
    from django.core.handlers.wsgi import WSGIHandler

    settings.SECURE_SSL_REDIRECT = True
    app = PredictionDispatcher(WSGIHandler())  # middleware read their settings when loaded
    env = environ("/api/v1/models/acme/iris/predict", body=orjson.dumps({"inputs": [ROW]}), X_API_KEY=tenant_a.api_key)
    status, headers, _ = call(env, app)
    assert status == 301
    assert headers["Location"].startswith("https://testserver/api/v1/models/acme/iris/predict")


@THROUGH_WSGI
def test_an_unexpected_exception_is_djangos_500(tenant_a, iris, monkeypatch):
    from inference import views_native

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(views_native, "run_prediction", broken)
    status, _, body = call(environ("/api/v1/models/acme/iris/predict", body=orjson.dumps({"inputs": [ROW]}), X_API_KEY=tenant_a.api_key))
    assert status == 500
    assert b"boom" not in body


def test_the_suites_clients_go_through_the_dispatcher(tenant_a, iris):
    response = tenant_a.key_client().post("/api/v1/models/acme/iris/predict", {"inputs": [ROW]}, format="json")
    assert response.status_code == 200
    assert getattr(response, "served_by_dispatcher", False)
    page = tenant_a.key_client().get("/api/v1/models/acme/iris")
    assert not getattr(page, "served_by_dispatcher", False)


def _predict_through_wsgi(tenant_a, app=application) -> int:
    env = environ("/api/v1/models/acme/iris/predict", body=orjson.dumps({"inputs": [ROW]}), X_API_KEY=tenant_a.api_key)
    status, _, _ = call(env, app)
    return status


@THROUGH_WSGI
def test_a_connection_past_its_max_age_is_closed_at_the_end_of_a_prediction(tenant_a, iris):
    """The one-pass hygiene does what close_old_connections does on request_finished."""
    import time

    from django.db import connection

    app = PredictionDispatcher(django_app=None)
    assert app.signals.lean  # the suite's receivers are Django's own here
    assert _predict_through_wsgi(tenant_a, app) == 200  # warm: key, route and model cached
    connection.ensure_connection()
    assert connection.connection is not None
    connection.close_at = time.monotonic() - 1  # older than CONN_MAX_AGE
    assert _predict_through_wsgi(tenant_a, app) == 200
    assert connection.connection is None
    connection.ensure_connection()
    connection.close_at = None
    connection.queries_log.append({"sql": "SELECT 1", "time": "0.000"})
    assert _predict_through_wsgi(tenant_a, app) == 200
    assert connection.connection is not None  # a healthy connection is kept
    assert not connection.queries_log  # reset_queries' work, at the start


@THROUGH_WSGI
def test_a_connection_a_prediction_opens_is_closed_at_its_end_without_a_max_age(tenant_a, iris):
    """CONN_MAX_AGE=0: the connection a request opened is closed when it ends (request_finished's part)."""
    from django.db import connection

    from accounts.authentication import forget_cached_keys

    app = PredictionDispatcher(django_app=None)
    assert _predict_through_wsgi(tenant_a, app) == 200
    connection.close()
    max_age = connection.settings_dict["CONN_MAX_AGE"]
    connection.settings_dict["CONN_MAX_AGE"] = 0
    try:
        forget_cached_keys()  # so that this request reads the key from the database
        assert _predict_through_wsgi(tenant_a, app) == 200
        assert connection.connection is None
    finally:
        connection.settings_dict["CONN_MAX_AGE"] = max_age


@THROUGH_WSGI
def test_other_receivers_of_the_request_signals_are_sent_them(tenant_a, iris):
    from django.core.signals import request_finished, request_started

    app = PredictionDispatcher(django_app=None)
    assert _predict_through_wsgi(tenant_a, app) == 200
    seen = []

    def started(sender, environ, **kwargs):
        seen.append(("started", environ["PATH_INFO"]))

    def finished(sender, **kwargs):
        seen.append(("finished", sender.__name__))

    request_started.connect(started)
    request_finished.connect(finished)
    try:
        assert _predict_through_wsgi(tenant_a, app) == 200
    finally:
        request_started.disconnect(started)
        request_finished.disconnect(finished)
    assert seen == [("started", "/api/v1/models/acme/iris/predict"), ("finished", "WSGIHandler")]
    assert _predict_through_wsgi(tenant_a, app) == 200
    assert len(seen) == 2  # disconnected: the one-pass hygiene again


def test_a_cache_backend_that_closes_something_keeps_the_signals(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache", "LOCATION": "127.0.0.1:11211"}}
    assert not PredictionDispatcher(django_app=None).signals.lean
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert PredictionDispatcher(django_app=None).signals.lean
