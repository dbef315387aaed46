"""Middleware that keeps backing-service failures from ever becoming a stack trace."""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from platform_site import errors
from platform_site.problems import problem_response

logger = logging.getLogger(__name__)


class BackingServiceErrorMiddleware:
    """A database that is down answers 503 with a clear body on every path, API or page."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        return database_unavailable(request, exception)


def database_unavailable(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The 503 for a database outage, in the error shape of the protocol the path speaks."""
    logger.error("database unavailable on %s: %s", request.path, exception)
    error = errors.ServiceUnavailable("The database is unavailable; try again shortly.", service="database")
    if request.path.startswith("/v2/"):
        return JsonResponse({"error": error.detail}, status=503)
    if "/invocations" in request.path:
        return JsonResponse({"error_code": "SERVICE_UNAVAILABLE", "message": error.detail}, status=503)
    if request.path.startswith("/api/"):
        return problem_response(error)
    return HttpResponse(
        "<h1>Service unavailable</h1><p>The database is unavailable; try again shortly.</p>",
        status=503,
        content_type="text/html",
    )
