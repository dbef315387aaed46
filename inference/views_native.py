"""The native JSON predict endpoints (`/api/v1/models/{org}/{model}[/versions/{n}]/predict`).

Plain Django views rather than DRF: on the hot path a serializer per request is measurable
cost and buys nothing (the body is checked against the version's signature anyway).
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from inference.explanations import response_body
from inference.hotpath import ModelInput, PredictionCall, run_prediction
from inference.protocols.outputs import json_values
from inference.validation import check_rows, normalise_rows, to_model_input
from platform_site.errors import InvalidInput, MalformedBody, ModelhostError, PayloadTooLarge
from platform_site.problems import problem_response
from platform_site.renderers import ORJSON_OPTIONS

logger = logging.getLogger(__name__)

ALLOWED_KEYS = {"inputs", "parameters", "unit_id"}
ALLOWED_PARAMETERS = {"probabilities", "explain"}


def read_body(request: HttpRequest) -> bytes:
    """The raw body, refusing (413) what is over the limit before reading it."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    length = request.META.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"The body is {int(length)} bytes; the limit is {limit} bytes.")
    try:
        return request.body
    except RequestDataTooBig:
        raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes.") from None


def parse_native(raw: bytes) -> PredictionCall:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise InvalidInput(
            'The body must be a JSON object like {"inputs": [[...]]}.',
            errors=[{"field": "body", "message": "expected an object"}],
        )
    unknown = sorted(set(body) - ALLOWED_KEYS)
    if unknown:
        raise InvalidInput(
            f"Unknown field(s): {', '.join(unknown)}; expected inputs, parameters, unit_id.",
            errors=[{"field": name, "message": "Unknown field."} for name in unknown],
        )
    if "inputs" not in body:
        raise InvalidInput("The body has no inputs.", errors=[{"field": "inputs", "message": "required"}])
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("parameters must be an object.", errors=[{"field": "parameters", "message": "expected an object"}])
    unknown = sorted(set(parameters) - ALLOWED_PARAMETERS)
    if unknown:
        raise InvalidInput(
            f"Unknown parameter(s): {', '.join(unknown)}.",
            errors=[{"field": f"parameters.{name}", "message": "Unknown parameter."} for name in unknown],
        )
    want_proba = parameters.get("probabilities", False)
    if not isinstance(want_proba, bool):
        raise InvalidInput(
            "parameters.probabilities must be true or false.",
            errors=[{"field": "parameters.probabilities", "message": "expected a boolean"}],
        )
    explain = parameters.get("explain", False)
    if not isinstance(explain, bool):
        raise InvalidInput(
            "parameters.explain must be true or false.", errors=[{"field": "parameters.explain", "message": "expected a boolean"}]
        )
    unit_id = body.get("unit_id")
    if unit_id is not None and not isinstance(unit_id, (str, int)) or isinstance(unit_id, bool):
        raise InvalidInput("unit_id must be a string.", errors=[{"field": "unit_id", "message": "expected a string"}])
    inputs = body["inputs"]

    def validate(target) -> ModelInput:
        spec = target.spec
        rows = normalise_rows(inputs, spec)
        if explain and len(rows) > settings.EXPLAIN_MAX_ROWS:
            raise PayloadTooLarge(
                f"{len(rows)} rows is more than the {settings.EXPLAIN_MAX_ROWS} one request may ask to explain; "
                "send fewer rows or leave parameters.explain out.",
                errors=[{"field": "inputs", "message": f"more than {settings.EXPLAIN_MAX_ROWS} rows to explain"}],
            )
        check_rows(rows, spec)
        return ModelInput(x=to_model_input(rows, spec), n_rows=len(rows), canonical=orjson.dumps(rows), recorded=rows)

    return PredictionCall(
        unit_id=str(unit_id) if unit_id is not None else None, want_proba=want_proba, validate=validate, explain=explain
    )


def _json(data: Any, status: int = 200, headers: dict | None = None) -> HttpResponse:
    response = HttpResponse(orjson.dumps(data, option=ORJSON_OPTIONS), status=status, content_type="application/json")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _predict(request: HttpRequest, org: str, model: str, number: int | None) -> HttpResponse:
    if request.method != "POST":
        response = problem_response(_method_not_allowed())
        response["Allow"] = "POST"
        return response
    try:
        raw = read_body(request)
        outcome = run_prediction(
            request=request,
            org_slug=org,
            model_name=model,
            version_number=number,
            protocol="native",
            parse=lambda: parse_native(raw),
        )
    except ModelhostError as exc:
        return problem_response(exc)
    body = {
        "id": outcome.prediction_id,
        "model": outcome.route.full_name,
        "version": outcome.target.number,
        "variant": outcome.variant,
        "predictions": json_values(outcome.predictions),
    }
    if outcome.call.want_proba:
        body["probabilities"] = json_values(outcome.probabilities)
    if outcome.target.task == "classification":
        body["classes"] = outcome.target.classes
    if outcome.explanation is not None:
        body["explainer"], body["explanations"] = response_body(
            explanation=outcome.explanation,
            features=outcome.target.spec.names,
            predictions=body["predictions"],
            classifier=outcome.target.task == "classification",
        )
    body["cache_hit"] = outcome.cache_hit
    body["latency_ms"] = round(outcome.latency_ms, 3)
    return _json(body, headers=outcome.headers())


def unexpected_error(request: HttpRequest) -> ModelhostError:
    """A 500 for an exception no code path expected, logged with the request id the client is told."""
    request_id = "req_" + secrets.token_hex(8)
    logger.exception("Unexpected error serving %s %s (request id %s)", request.method, request.path, request_id)
    return ModelhostError(
        f"An unexpected error occurred while serving this prediction; quote request id {request_id} when reporting it.",
        headers={"X-Request-Id": request_id},
        request_id=request_id,
    )


def answers_unexpected_errors(render: Callable[[ModelhostError], HttpResponse]):
    """Render any exception the view did not expect with `render` (the protocol's own error shape), as a 500.

    Without this an unexpected exception reaches Django's handler, which shows its debug page
    under DEBUG. A database outage is left to the dispatcher and middleware, which answer 503.
    """

    def decorate(view):
        @functools.wraps(view)
        def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            try:
                return view(request, *args, **kwargs)
            except (OperationalError, InterfaceError):
                raise
            except Exception:
                return render(unexpected_error(request))

        return guarded

    return decorate


def _method_not_allowed() -> ModelhostError:
    error = ModelhostError("Use POST to predict.")
    error.status, error.code, error.title = 405, "method_not_allowed", "Method not allowed"
    return error


@csrf_exempt
@answers_unexpected_errors(problem_response)
def predict(request: HttpRequest, org: str, model: str) -> HttpResponse:
    return _predict(request, org, model, None)


@csrf_exempt
@answers_unexpected_errors(problem_response)
def predict_version(request: HttpRequest, org: str, model: str, number: int) -> HttpResponse:
    return _predict(request, org, model, number)
