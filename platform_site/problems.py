"""Render every API error as application/problem+json (RFC 9457).

Hand-written: the shape (`type, title, status, detail, code, errors[]`) is ours, and DRF's
own exceptions must land in the same shape as the platform's.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, HttpResponse
from rest_framework import exceptions as drf

from platform_site import errors
from platform_site.renderers import dumps

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_response(error: errors.ModelhostError) -> HttpResponse:
    response = HttpResponse(dumps(error.as_problem()), status=error.status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in error.headers.items():
        response[name] = value
    return response


def flatten_validation_errors(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    """Turn DRF's nested ValidationError detail into `[{field, message}]`, fields dotted."""
    found: list[dict[str, str]] = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = prefix if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else str(key))
            found.extend(flatten_validation_errors(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            found.extend({"field": prefix or "body", "message": str(item)} for item in detail)
        else:
            for index, item in enumerate(detail):
                found.extend(flatten_validation_errors(item, f"{prefix}[{index}]" if prefix else f"[{index}]"))
    else:
        found.append({"field": prefix or "body", "message": str(detail)})
    return found


def as_modelhost_error(exc: Exception) -> errors.ModelhostError | None:
    """Map a raised exception to the platform's hierarchy; None means 'not ours to render'."""
    if isinstance(exc, errors.ModelhostError):
        return exc
    if isinstance(exc, drf.ValidationError):
        found = flatten_validation_errors(exc.detail)
        summary = "; ".join(f"{item['field']}: {item['message']}" for item in found[:5])
        return errors.InvalidInput(summary or "The input is not valid.", errors=found)
    if isinstance(exc, drf.ParseError):
        return errors.MalformedBody(str(exc.detail))
    if isinstance(exc, (drf.NotAuthenticated, drf.AuthenticationFailed)):
        auth_header = getattr(exc, "auth_header", None)
        if not auth_header:
            # DRF downgrades to 403 when no authenticator can name a scheme.
            return errors.PermissionDenied(str(exc.detail))
        return errors.Unauthenticated(str(exc.detail), headers={"WWW-Authenticate": auth_header})
    if isinstance(exc, (drf.PermissionDenied, DjangoPermissionDenied)):
        detail = getattr(exc, "detail", None)
        return errors.PermissionDenied(str(detail) if detail else None)
    if isinstance(exc, (drf.NotFound, Http404)):
        return errors.NotFound()
    if isinstance(exc, drf.MethodNotAllowed):
        error = errors.ModelhostError(str(exc.detail))
        error.status, error.code, error.title = 405, "method_not_allowed", "Method not allowed"
        return error
    if isinstance(exc, drf.NotAcceptable):
        error = errors.ModelhostError(str(exc.detail))
        error.status, error.code, error.title = 406, "not_acceptable", "Not acceptable"
        return error
    if isinstance(exc, drf.UnsupportedMediaType):
        return errors.UnsupportedMediaType(str(exc.detail))
    if isinstance(exc, drf.Throttled):
        return errors.RateLimited(str(exc.detail), headers={"Retry-After": str(int(exc.wait or 1))})
    if isinstance(exc, (OperationalError, InterfaceError)):
        return errors.ServiceUnavailable("The database is unavailable; try again shortly.", service="database")
    if isinstance(exc, DatabaseError):
        return None
    if isinstance(exc, drf.APIException):
        error = errors.ModelhostError(str(exc.detail))
        error.status, error.code = exc.status_code, exc.default_code
        return error
    return None


def problem_exception_handler(exc: Exception, context: dict) -> HttpResponse | None:
    error = as_modelhost_error(exc)
    if error is None:
        return None
    return problem_response(error)
