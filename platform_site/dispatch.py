"""The WSGI entry point: prediction requests go to a small WSGI application of their own, the rest to Django.

DESIGN.md asks for "one request, in order, with nothing else on the way". Through Django's
full handler a prediction first crosses twelve middleware (sessions, CSRF, messages, htmx,
two Prometheus passes that record a dozen series) and the URL resolver, which walks every
pattern of the site: about a fifth of the CPU of an iris request (bench/profile_hotpath.py).
None of that serves a prediction, which is authenticated by its own header and answers JSON.
So a POST to one of the six prediction paths is answered by PredictionApp, which calls the
view the URL configuration names and does, in this order, only this:

1. host check: the Host header against ALLOWED_HOSTS (HttpRequest.get_host); a host Django
   refuses is handed to Django, which answers its own 400, so the answer is the same;
2. HTTPS: with SECURE_SSL_REDIRECT, a plain-http request is handed to Django, which redirects it;
3. database connection hygiene: reset_queries() and close_old_connections() when the request
   starts, close_old_connections() when it ends: the work Django's own receivers of
   request_started and request_finished do (the signals themselves are not sent: their
   dispatch cost 32 against 13 us of CPU a request, measured on this machine; the test
   suite fails when another receiver is connected to them, see REQUEST_SIGNAL_RECEIVERS);
4. the view; a database outage answers 503 in the protocol's own error shape, as
   BackingServiceErrorMiddleware does, and any other exception goes to Django's own
   exception handling (logged, a 500 without details);
5. security headers: SecurityMiddleware's and XFrameOptionsMiddleware's process_response;
6. Content-Length, as CommonMiddleware sets it;
7. metrics: the django_http_* series the autoscaler, alerts and dashboards read (requests by
   view, responses by status, latency by view, and the before-middleware request counter the
   "web is down" alert's absent() reads); the series nothing reads are not written here.

Everything else takes the full path: other methods, a browser's session cookie (the "Try it"
page authenticates by session and CSRF, which the middleware provide), a path with a trailing
slash. MIDDLEWARE_ON_PREDICTIONS says, for every middleware in settings.MIDDLEWARE, which step
replaces it or why it does not apply; an unlisted one stops the application from starting
(and a test), so a middleware added later cannot silently skip the prediction endpoints.
tests/test_dispatch.py checks that every fast path resolves to the same view and name in the
URL configuration, and that the security headers and host checks are the Django pages' own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from django.conf import settings
from django.core.exceptions import DisallowedHost, ImproperlyConfigured
from django.core.handlers.exception import response_for_exception
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
from django.db import InterfaceError, OperationalError, close_old_connections, reset_queries
from django.http import HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware

from platform_site.middleware import database_unavailable

# Django's slug and int converters, as in inference/urls.py and inference/urls_v2.py.
_SLUG = r"[-a-zA-Z0-9_]+"
FAST_PATHS = re.compile(
    rf"^/(?:api/v1/models/(?P<org>{_SLUG})/(?P<model>{_SLUG})(?:/versions/(?P<number>[0-9]+))?/(?P<action>predict|invocations)"
    rf"|v2/models/(?P<v2model>{_SLUG})(?:/versions/(?P<v2number>[0-9]+))?/infer)$"
)

# Reviewed: what each middleware of settings.MIDDLEWARE does for a prediction request, by the
# numbered steps of the module docstring. A middleware missing here stops PredictionApp.
MIDDLEWARE_ON_PREDICTIONS = {
    "django_prometheus.middleware.PrometheusBeforeMiddleware": "replicated: the request counter (step 7)",
    "django.middleware.security.SecurityMiddleware": (
        "replicated: its headers (step 5); its HTTPS redirect by handing plain http to Django (step 2)"
    ),
    "whitenoise.middleware.WhiteNoiseMiddleware": (
        "not applicable: serves GET and HEAD under STATIC_URL; predictions are POSTs elsewhere"
    ),
    "platform_site.middleware.BackingServiceErrorMiddleware": (
        "replicated: a database outage answers database_unavailable (step 4)"
    ),
    "django.contrib.sessions.middleware.SessionMiddleware": (
        "not applicable: a request with the session cookie goes to Django; predictions authenticate by API key"
    ),
    "django.middleware.common.CommonMiddleware": (
        "replicated: Content-Length (step 6); APPEND_SLASH and PREPEND_WWW do not apply to a POST on a prediction path; "
        "DISALLOWED_USER_AGENTS is unset (tested)"
    ),
    "django.middleware.csrf.CsrfViewMiddleware": (
        "not applicable: the prediction views are csrf_exempt; a browser's session cookie sends the request to Django"
    ),
    "django.contrib.auth.middleware.AuthenticationMiddleware": (
        "not applicable: the prediction views authenticate the API key and never read request.user"
    ),
    "django.contrib.messages.middleware.MessageMiddleware": "not applicable: the prediction views send no messages",
    "django.middleware.clickjacking.XFrameOptionsMiddleware": "replicated: X-Frame-Options (step 5)",
    "django_htmx.middleware.HtmxMiddleware": "not applicable: the prediction views never read request.htmx",
    "django_prometheus.middleware.PrometheusAfterMiddleware": (
        "replicated: requests and latency by view, responses by status (step 7)"
    ),
    "axes.middleware.AxesMiddleware": (
        "not applicable: it answers sign-in lockouts raised by django.contrib.auth.authenticate(); predictions check an "
        "API "
        "key or a JWT and never sign in"
    ),
}

# Reviewed: the receivers of the request signals, whose work step 3 does. The test suite
# fails when another is connected (tests/test_dispatch.py).
REQUEST_SIGNAL_RECEIVERS = {
    "request_started": {"django.db.reset_queries", "django.db.close_old_connections"},
    "request_finished": {
        "django.db.close_old_connections",
        "django.core.cache.close_caches",
        "django.core.handlers.base.reset_urlconf",
    },
}
# close_caches: the configured backends' close() does nothing for Redis and file caches
# (checked at start: _check_caches); reset_urlconf: nothing on this path sets a URLconf.


def _no_view(request):  # the security middleware never calls get_response here
    raise AssertionError("unreachable")


def check_middleware() -> None:
    """Refuse to start when settings.MIDDLEWARE holds a middleware nobody reviewed for this path."""
    unreviewed = [name for name in settings.MIDDLEWARE if name not in MIDDLEWARE_ON_PREDICTIONS]
    if unreviewed:
        raise ImproperlyConfigured(
            f"{', '.join(unreviewed)} in MIDDLEWARE: say in platform_site.dispatch.MIDDLEWARE_ON_PREDICTIONS "
            "whether the prediction application replicates it or why it does not apply"
        )


def _check_caches() -> None:
    """close_caches is not called: refuse a cache backend whose close() does something."""
    from django.core.cache.backends.base import BaseCache
    from django.utils.module_loading import import_string

    for alias, cache in settings.CACHES.items():
        if import_string(cache["BACKEND"]).close is not BaseCache.close:
            raise ImproperlyConfigured(
                f"cache {alias!r} ({cache['BACKEND']}) closes connections at the end of a request, "
                "which the prediction application does not do: add close_caches() to PredictionApp.finish"
            )


class _DjangoSeries:
    """django-prometheus's metrics, the children for each view and status bound once."""

    def __init__(self) -> None:
        from django_prometheus.middleware import Metrics

        self.metrics = Metrics.get_instance()
        self._by_view: dict[tuple[str, str], tuple] = {}
        self._by_status: dict[int, object] = {}

    def children(self, view: str, transport: str) -> tuple:
        children = self._by_view.get((view, transport))
        if children is None:
            m = self.metrics
            children = (
                m.requests_by_view_transport_method.labels(view=view, transport=transport, method="POST"),
                m.requests_latency_by_view_method.labels(view=view, method="POST"),
            )
            self._by_view[(view, transport)] = children
        return children

    def finished(self, children: tuple, status: int, seconds: float) -> None:
        # The request is counted here, with its answer: a run on the event loop that hands the
        # request to a thread (platform_site.on_loop) never gets here, so it is counted once.
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.metrics.responses_by_status.labels(status=str(status))
        self.metrics.requests_total.inc()
        children[0].inc()
        child.inc()
        children[1].observe(seconds)


class PredictionApp:
    """The prediction endpoints as a WSGI application: the steps of the module docstring.

    `handle` returns None for a request Django must answer (a refused host, plain http
    where HTTPS is required); `__call__` then passes it to `django_app`.
    """

    def __init__(self, django_app: Callable | None) -> None:
        from inference import views_native, views_protocols

        check_middleware()
        _check_caches()
        self.django_app = django_app
        # (view function, URL name) by (action, has version number).
        self.views: dict[tuple[str, bool], tuple[Callable, str]] = {
            ("predict", False): (views_native.predict, "predict"),
            ("predict", True): (views_native.predict_version, "predict-version"),
            ("invocations", False): (views_protocols.invocations, "invocations"),
            ("invocations", True): (views_protocols.invocations, "invocations-version"),
            ("infer", False): (views_protocols.v2_infer, "v2-infer"),
            ("infer", True): (views_protocols.v2_infer, "v2-infer-version"),
        }
        self.security = SecurityMiddleware(_no_view)
        self.frame_options = XFrameOptionsMiddleware(_no_view)
        self.series = _DjangoSeries()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        match = FAST_PATHS.match(environ.get("PATH_INFO", ""))
        response = self.handle(environ, match) if match is not None else None
        if response is None:
            return self.django_app(environ, start_response)
        return self.answer(response, start_response)

    @staticmethod
    def answer(response: HttpResponse, start_response: Callable) -> list[bytes]:
        start_response(
            f"{response.status_code} {response.reason_phrase}",
            [*response.items(), *(("Set-Cookie", c.output(header="")) for c in response.cookies.values())],
        )
        # The prediction views never stream: the body is in memory, and a list is written by
        # granian in one call instead of iterating a Python object from Rust.
        return [response.content]

    def handle(self, environ: dict, match: re.Match, *, on_loop: bool = False) -> HttpResponse | None:
        """The response to a prediction request, or None when Django should answer it.

        `on_loop`: the event loop answers it (platform_site.on_loop), where a query leaves the
        loop before it runs: the loop's thread never holds a database connection, so step 3
        has nothing to do there."""
        started = time.perf_counter()
        request = WSGIRequest(environ)
        try:
            request.get_host()
        except DisallowedHost:
            return None
        secure = request.is_secure()
        if settings.SECURE_SSL_REDIRECT and not secure:
            return None
        if not on_loop:
            self.start()
        try:
            return self._respond(request, match, secure, started)
        finally:
            request.close()
            if not on_loop:
                self.finish()

    @staticmethod
    def start() -> None:
        """Django's request_started receivers' work: forget logged queries, close stale connections."""
        reset_queries()
        close_old_connections()

    @staticmethod
    def finish() -> None:
        """Django's request_finished receivers' work that applies here (see REQUEST_SIGNAL_RECEIVERS)."""
        close_old_connections()

    def _respond(self, request: WSGIRequest, match: re.Match, secure: bool, started: float) -> HttpResponse:
        groups = match.groupdict()
        if groups["v2model"] is not None:
            number = groups["v2number"]
            view, name = self.views[("infer", number is not None)]
            kwargs = {"model": groups["v2model"]}
        else:
            number = groups["number"]
            view, name = self.views[(groups["action"], number is not None)]
            kwargs = {"org": groups["org"], "model": groups["model"]}
        if number is not None:
            kwargs["number"] = int(number)
        children = self.series.children(name, "https" if secure else "http")
        try:
            response = view(request, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            response = database_unavailable(request, exc)
        except Exception as exc:
            response = response_for_exception(request, exc)
        response = self.frame_options.process_response(request, self.security.process_response(request, response))
        if not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))  # as CommonMiddleware does
        self.series.finished(children, response.status_code, time.perf_counter() - started)
        return response


class PredictionDispatcher:
    """WSGI application: prediction requests to PredictionApp, everything else to `django_app`."""

    def __init__(self, django_app: WSGIHandler | None) -> None:
        from accounts.authentication import credential_from_headers
        from inference.hotpath import computed_here

        self.credential_from_headers, self.computed_here = credential_from_headers, computed_here
        self.predictions = PredictionApp(django_app)
        self.django_app = django_app
        self.session_cookie = settings.SESSION_COOKIE_NAME + "="

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        match = self.fast_path(environ)
        if match is not None:
            response = self.predictions.handle(environ, match)
            if response is not None:
                return self.predictions.answer(response, start_response)
        return self.django_app(environ, start_response)

    def on_loop(self, environ: dict, start_response: Callable) -> list[bytes] | None:
        """The answer, when the event loop may give it itself (platform_site.on_loop), else None
        (the request goes to a request thread, `__call__`). A step that turns out to need a
        query or a runner raises LeaveTheLoop, before the request is counted."""
        match = self.fast_path(environ)
        if match is None:
            return None
        plaintext = self.credential_from_headers(environ)
        if plaintext is None:  # a JWT: its user is a query
            return None
        groups = match.groupdict()
        if groups["v2model"] is not None:
            org, model, number = None, groups["v2model"], groups["v2number"]
        else:
            org, model, number = groups["org"], groups["model"], groups["number"]
        if not self.computed_here(plaintext, org, model, int(number) if number is not None else None):
            return None
        response = self.predictions.handle(environ, match, on_loop=True)
        if response is None:  # Django answers (a refused host, plain http): on a request thread
            return None
        return self.predictions.answer(response, start_response)

    def fast_path(self, environ: dict) -> re.Match | None:
        """The match of a prediction path PredictionApp serves, or None for Django's."""
        if environ.get("REQUEST_METHOD") != "POST" or self.session_cookie in environ.get("HTTP_COOKIE", ""):
            return None
        return FAST_PATHS.match(environ.get("PATH_INFO", ""))
