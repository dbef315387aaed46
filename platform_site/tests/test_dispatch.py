"""platform_site.wsgi: prediction paths straight to their views, everything else through Django."""

from __future__ import annotations

import io
import weakref

import orjson
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import resolve

from platform_site.dispatch import MIDDLEWARE_ON_PREDICTIONS, REQUEST_SIGNAL_RECEIVERS, PredictionDispatcher
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
    view, view_name = dispatcher.predictions.views[(action, number is not None)]
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

    status, headers, body = call(
        environ("/api/v1/models/acme/iris/predict", body=orjson.dumps({"inputs": [ROW]}), X_API_KEY=tenant_a.api_key)
    )

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
    status, _, body = call(
        environ("/api/v1/models/acme/iris/predict", body=orjson.dumps({"inputs": [ROW]}), X_API_KEY=tenant_a.api_key)
    )
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


def _receiver_names(signal) -> set[str]:
    names = set()
    for entry in signal.receivers:
        receiver = entry[1]() if isinstance(entry[1], weakref.ReferenceType) else entry[1]
        if receiver is not None:
            names.add(f"{receiver.__module__}.{receiver.__qualname__}")
    return names


def test_the_request_signals_have_only_the_receivers_whose_work_the_prediction_app_does():
    """A receiver added to request_started or request_finished would never run for a prediction:
    review it, do its work in PredictionApp.start/finish, and list it in REQUEST_SIGNAL_RECEIVERS."""
    from django.core.signals import request_finished, request_started

    assert _receiver_names(request_started) == REQUEST_SIGNAL_RECEIVERS["request_started"]
    assert _receiver_names(request_finished) == REQUEST_SIGNAL_RECEIVERS["request_finished"]


def test_a_receiver_connected_later_is_seen_by_the_signal_check():
    from django.core.signals import request_finished

    def audit(sender, **kwargs):
        pass

    request_finished.connect(audit)
    try:
        assert _receiver_names(request_finished) - REQUEST_SIGNAL_RECEIVERS["request_finished"] == {
            f"{__name__}.{audit.__qualname__}"
        }
    finally:
        request_finished.disconnect(audit)


def test_every_middleware_is_replicated_or_declared_not_applicable_on_the_prediction_path(settings):
    """A middleware added to settings.MIDDLEWARE must be reviewed for the prediction path."""
    assert [name for name in settings.MIDDLEWARE if name not in MIDDLEWARE_ON_PREDICTIONS] == []
    assert sorted(MIDDLEWARE_ON_PREDICTIONS) == sorted(settings.MIDDLEWARE)  # no stale entry either
    assert settings.DISALLOWED_USER_AGENTS == []  # CommonMiddleware's refusal, not replicated


def test_an_unreviewed_middleware_stops_the_prediction_app_from_starting(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"]
    with pytest.raises(ImproperlyConfigured, match=r"django\.middleware\.gzip\.GZipMiddleware in MIDDLEWARE"):
        PredictionDispatcher(django_app=None)


def test_a_cache_backend_that_closes_something_stops_the_prediction_app_from_starting(settings):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache", "LOCATION": "127.0.0.1:11211"}
    }
    with pytest.raises(ImproperlyConfigured, match="closes connections at the end of a request"):
        PredictionDispatcher(django_app=None)
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert PredictionDispatcher(django_app=None).predictions is not None


# Headers that describe one particular answer; every other header of a Django page is a
# security header the prediction answers must carry with the same value.
ANSWER_HEADERS = {"Content-Type", "Content-Length", "Vary", "Allow", "Location"}


def _page_and_prediction(tenant_a, app, *, host: str, https: bool) -> tuple[tuple[int, dict], tuple[int, dict]]:
    extra = {"HTTP_HOST": host, "wsgi.url_scheme": "https" if https else "http", "SERVER_PORT": "443" if https else "80"}
    page = environ("/api/v1/me", method="GET", AUTHORIZATION=f"Bearer {tenant_a.api_key}")
    prediction = environ(
        "/api/v1/models/acme/iris/predict", body=orjson.dumps({"inputs": [ROW]}), AUTHORIZATION=f"Bearer {tenant_a.api_key}"
    )
    page_status, page_headers, _ = call({**page, **extra}, app)
    prediction_status, prediction_headers, _ = call({**prediction, **extra}, app)
    return (page_status, page_headers), (prediction_status, prediction_headers)


@THROUGH_WSGI
@pytest.mark.parametrize(
    "redirect, https, host, statuses",
    [
        pytest.param(False, False, "testserver", (200, 200), id="http"),
        pytest.param(False, True, "testserver", (200, 200), id="https"),
        pytest.param(True, False, "testserver", (301, 301), id="http-redirected-to-https"),
        pytest.param(True, True, "testserver", (200, 200), id="https-required"),
        pytest.param(False, False, "evil.example", (400, 400), id="refused-host"),
        pytest.param(True, True, "evil.example", (400, 400), id="refused-host-over-https"),
        pytest.param(True, False, "evil.example", (400, 400), id="refused-host-over-http"),
    ],
)
def test_a_prediction_answers_with_the_security_headers_and_host_checks_of_the_django_pages(
    tenant_a, iris, settings, redirect, https, host, statuses
):
    from django.core.handlers.wsgi import WSGIHandler

    settings.SECURE_SSL_REDIRECT = redirect
    settings.SECURE_HSTS_SECONDS = 3600
    app = PredictionDispatcher(WSGIHandler())  # middleware read their settings when loaded
    (page_status, page_headers), (prediction_status, prediction_headers) = _page_and_prediction(
        tenant_a, app, host=host, https=https
    )

    assert (page_status, prediction_status) == statuses
    security = {name: value for name, value in page_headers.items() if name not in ANSWER_HEADERS}
    assert {name: prediction_headers.get(name) for name in security} == security
    if statuses[0] == 200:
        assert {"X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy", "Cross-Origin-Opener-Policy"} <= set(security)
        assert ("Strict-Transport-Security" in security) == https
    if statuses[0] == 301:
        assert prediction_headers["Location"] == "https://testserver/api/v1/models/acme/iris/predict"


@THROUGH_WSGI
def test_the_prediction_app_itself_adds_the_security_headers(tenant_a, iris, settings):
    """Called on its own, without Django's handler behind it, the headers are still there."""
    from platform_site.dispatch import PredictionApp

    env = environ("/api/v1/models/acme/iris/predict", body=orjson.dumps({"inputs": [ROW]}), X_API_KEY=tenant_a.api_key)
    status, headers, _ = call(env, PredictionApp(django_app=None))
    assert status == 200
    assert (headers["X-Frame-Options"], headers["X-Content-Type-Options"], headers["Referrer-Policy"]) == (
        "DENY",
        "nosniff",
        "same-origin",
    )
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
