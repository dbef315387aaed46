"""Make Django's test clients enter through the production WSGI entry point.

platform_site.wsgi serves prediction paths with PredictionDispatcher, not Django's handler.
The suite's clients (Django's and DRF's) are ClientHandler subclasses; with this installed,
a request the dispatcher takes is answered by it, exactly as in production, so every
prediction test exercises the path production runs. Two differences are the test
client's: close_old_connections is not called (Django's test client disconnects it from the
request signals too), which would otherwise close the connection holding the test's
transaction; and the request's prediction record is sent to
Redis before the client returns (redis_client.settle_pending) rather than with the next
request, so a test can read the stream at once.
"""

from __future__ import annotations

from django.core.handlers.wsgi import WSGIRequest
from django.test.client import ClientHandler


def _keep_connections() -> None:
    """In place of close_old_connections: the test's transaction lives on the connection."""


def install(monkeypatch) -> None:
    from platform_site import dispatch, redis_client

    original = ClientHandler.__call__
    dispatcher = dispatch.PredictionDispatcher(django_app=None)

    def __call__(self, environ):
        match = dispatcher.fast_path(environ)
        if match is None:
            return original(self, environ)
        closes = dispatch.close_old_connections
        dispatch.close_old_connections = _keep_connections
        try:
            response = dispatcher.predictions.handle(environ, match)
        finally:
            dispatch.close_old_connections = closes
            # In production a record leaves for Redis with the worker's next request (or within
            # ~200 ms); a test reads Redis right after its request, so send it now. Tests of
            # that delay call the dispatcher or records.publish directly.
            redis_client.settle_pending()
        if response is None:
            return original(self, environ)
        response.served_by_dispatcher = True
        response.wsgi_request = WSGIRequest(environ)  # what the client reads (its body was consumed)
        return response

    monkeypatch.setattr(ClientHandler, "__call__", __call__)
