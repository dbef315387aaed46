"""The WSGI entry point: prediction requests go straight to their view, the rest through Django.

DESIGN.md asks for "one request, in order, with nothing else on the way". Through Django's
full handler a prediction first crosses twelve middleware (sessions, CSRF, messages,
htmx, two Prometheus passes that record a dozen series) and the URL resolver, which walks
every pattern of the site: about a fifth of the CPU of an iris request
(bench/profile_hotpath.py). None of that serves a prediction, which is authenticated by its
own header and answers JSON. So a POST to one of the six prediction paths is dispatched
here, to the same view function the URL configuration names, and keeps only what such a
request needs from the stack it skips:

- request_started / request_finished (database connection hygiene), as Django's handler,
  with their receivers' work done in one pass while those are only Django's own (_RequestSignals);
- the host check (ALLOWED_HOSTS) and the security headers (SecurityMiddleware and
  XFrameOptionsMiddleware run on the response, so the headers are the same);
- a database outage answers 503 in the protocol's own error shape, as the middleware does;
  any other exception goes to Django's own exception handling (logged, a 500);
- the django_http_* series the autoscaler, alerts and dashboards read: requests by view,
  responses by status, latency by view, and the before-middleware request counter (the
  "web is down" alert's absent()); the series nothing reads are not written here.

Everything else takes the full path: other methods, a browser's session cookie (the
"Try it" page authenticates by session and CSRF, which the middleware provide), a plain
HTTP request where SECURE_SSL_REDIRECT wants HTTPS, a host Django would refuse (it
answers the 400), a path with a trailing slash. tests/test_dispatch.py checks that every
fast path resolves to the same view and name in the URL configuration, and that answers
are the same both ways.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

from django.conf import settings
from django.core import signals
from django.core.exceptions import DisallowedHost
from django.core.handlers.exception import response_for_exception
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
from django.db import InterfaceError, OperationalError, connections
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


def _no_view(request):  # the security middleware never calls get_response here
    raise AssertionError("unreachable")


class _RequestSignals:
    """request_started and request_finished around a prediction, as Django's handler sends them.

    Their receivers are Django's own: reset_queries and close_old_connections when a request
    starts; close_old_connections, close_caches and reset_urlconf when it ends. Each walks the
    thread's asgiref Locals (connections.all(), caches.all(), the URLconf): 23 µs a request
    together, 8-11 % of an iris prediction's CPU in process (bench/profile_hotpath.py --loop-only).
    While the receivers are exactly those, the same work is done in one pass over the thread's
    database connections at each end: queries_log cleared at the start, and every connection
    closed if unusable or past CONN_MAX_AGE, at both ends. close_caches is left out only when
    every configured cache backend's close() is BaseCache's no-op (Redis and file caches);
    reset_urlconf is left out because nothing on this path sets a URLconf (Django's handler
    resets the one it sets at the end of its own request). When any other receiver is
    connected, or one of Django's is disconnected (the test client does), the signals are sent.
    """

    def __init__(self) -> None:
        from django.core.cache import close_caches
        from django.core.handlers.base import reset_urlconf
        from django.db import close_old_connections, reset_queries

        started, finished = signals.request_started, signals.request_finished
        # The receivers lists as they are when they are Django's own; None where they are not.
        self.started_receivers = list(started.receivers) if self._receivers(started) == {reset_queries, close_old_connections} else None
        self.finished_receivers = (
            list(finished.receivers)
            if self._caches_close_nothing() and self._receivers(finished) == {close_old_connections, close_caches, reset_urlconf}
            else None
        )

    @property
    def lean(self) -> bool:
        return self.started_receivers is not None and self.finished_receivers is not None

    @staticmethod
    def _receivers(signal) -> set:
        sync, asynchronous = signal._live_receivers(WSGIHandler)
        return set(sync) if not asynchronous else {None}

    @staticmethod
    def _caches_close_nothing() -> bool:
        from django.core.cache.backends.base import BaseCache
        from django.utils.module_loading import import_string

        return all(import_string(cache["BACKEND"]).close is BaseCache.close for cache in settings.CACHES.values())

    def started(self, environ: dict) -> None:
        if signals.request_started.receivers != self.started_receivers:
            signals.request_started.send(sender=WSGIHandler, environ=environ)
            return
        for connection in connections.all(initialized_only=True):
            connection.queries_log.clear()
            connection.close_if_unusable_or_obsolete()

    def close(self, response: HttpResponse) -> None:
        """response.close(): its closers, then request_finished."""
        if signals.request_finished.receivers != self.finished_receivers:
            response.close()
            return
        for closer in response._resource_closers:
            try:
                closer()
            except Exception:  # as HttpResponseBase.close
                pass
        response._resource_closers.clear()
        response.closed = True
        self._close_obsolete_connections()

    def finished(self) -> None:
        if signals.request_finished.receivers != self.finished_receivers:
            signals.request_finished.send(sender=WSGIHandler)
            return
        self._close_obsolete_connections()

    @staticmethod
    def _close_obsolete_connections() -> None:
        for connection in connections.all(initialized_only=True):
            connection.close_if_unusable_or_obsolete()


class _DjangoSeries:
    """django-prometheus's metrics, the children for each view and status bound once."""

    def __init__(self) -> None:
        from django_prometheus.middleware import Metrics

        self.metrics = Metrics.get_instance()
        self._by_view: dict[tuple[str, str], tuple] = {}
        self._by_status: dict[int, object] = {}

    def started(self, view: str, transport: str) -> tuple:
        children = self._by_view.get((view, transport))
        if children is None:
            m = self.metrics
            children = (
                m.requests_by_view_transport_method.labels(view=view, transport=transport, method="POST"),
                m.requests_latency_by_view_method.labels(view=view, method="POST"),
            )
            self._by_view[(view, transport)] = children
        self.metrics.requests_total.inc()
        children[0].inc()
        return children

    def finished(self, children: tuple, status: int, seconds: float) -> None:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.metrics.responses_by_status.labels(status=str(status))
        child.inc()
        children[1].observe(seconds)


class PredictionDispatcher:
    """WSGI application: the prediction views directly, everything else `django_app`."""

    def __init__(self, django_app: WSGIHandler) -> None:
        from inference import views_native, views_protocols

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
        self.session_cookie = settings.SESSION_COOKIE_NAME + "="
        self.security = SecurityMiddleware(_no_view)
        self.frame_options = XFrameOptionsMiddleware(_no_view)
        self.series = _DjangoSeries()
        self.signals = _RequestSignals()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        response = self.handle(environ)
        if response is None:
            return self.django_app(environ, start_response)
        start_response(
            f"{response.status_code} {response.reason_phrase}",
            [*response.items(), *(("Set-Cookie", c.output(header="")) for c in response.cookies.values())],
        )
        if response.streaming:
            return response
        # The body is in memory: close now (request_finished) and hand the server a list, which
        # granian writes in one call instead of iterating a Python object from Rust.
        content = response.content
        self.signals.close(response)
        return [content]

    def fast_path(self, environ: dict) -> re.Match | None:
        """The match of a prediction path this dispatcher serves, or None for Django's."""
        if environ.get("REQUEST_METHOD") != "POST" or self.session_cookie in environ.get("HTTP_COOKIE", ""):
            return None
        return FAST_PATHS.match(environ.get("PATH_INFO", ""))

    def handle(self, environ: dict) -> HttpResponse | None:
        """The response of a prediction request, or None when the full Django stack should answer.

        Closing the response (the WSGI server does) sends request_finished and closes the request.
        """
        match = self.fast_path(environ)
        if match is None:
            return None
        started = time.perf_counter()
        self.signals.started(environ)
        request = WSGIRequest(environ)
        try:
            request.get_host()
        except DisallowedHost:
            match = None
        secure = request.is_secure()
        if match is None or (settings.SECURE_SSL_REDIRECT and not secure):
            request.close()
            self.signals.finished()  # Django's handler sends its own pair
            return None
        response = self._respond(request, match, secure, started)
        response._handler_class = WSGIHandler
        response._resource_closers.append(request.close)
        return response

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
        children = self.series.started(name, "https" if secure else "http")
        try:
            response = view(request, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            response = database_unavailable(request, exc)
        except Exception as exc:
            response = response_for_exception(request, exc)
        response = self.frame_options.process_response(request, self.security.process_response(request, response))
        if not response.streaming and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))  # as CommonMiddleware does
        self.series.finished(children, response.status_code, time.perf_counter() - started)
        return response
