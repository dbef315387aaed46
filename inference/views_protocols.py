"""The Open Inference Protocol (KServe V2) and MLflow scoring endpoints.

Both run the same hot path as the native endpoint; they differ only in how a body is read
and an answer or an error is written. V2 model names resolve inside the organization of
the API key that calls (V2 paths carry no organization).
"""

from __future__ import annotations

from importlib.metadata import version as distribution_version

import numpy as np
import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

import platform_site
from inference import routing
from inference.hotpath import ModelInput, PredictionCall, authenticate, run_prediction
from inference.protocols import mlflow as mlflow_protocol
from inference.protocols import v2
from inference.validation import to_model_input
from inference.views_native import answers_unexpected_errors, read_body
from platform_site.errors import InvalidInput, ModelhostError, NotFound, PayloadTooLarge

# The runners' scikit-learn (the same environment), read from its metadata: the web itself never
# imports scikit-learn.
SKLEARN_VERSION = distribution_version("scikit-learn")

SERVER_NAME = "modelhost"
SERVER_VERSION = getattr(platform_site, "__version__", "1.0.0")
UNIT_HEADER = "HTTP_X_UNIT_ID"
# The tasks V2 lists the explanation outputs for (inference.runners.explainers explains these).
EXPLAINED_TASKS = ("classification", "regression")


def _v2_error(exc: ModelhostError) -> HttpResponse:
    response = HttpResponse(v2.error_body(v2.error_message(exc)), status=exc.status, content_type="application/json")
    for name, value in exc.headers.items():
        response[name] = value
    return response


def _method_check(request: HttpRequest, method: str) -> ModelhostError | None:
    if request.method == method:
        return None
    error = ModelhostError(f"Use {method} here.")
    error.status, error.code = 405, "method_not_allowed"
    return error


def v2_live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"live": True})


def v2_ready(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ready": True})


def v2_server_metadata(request: HttpRequest) -> JsonResponse:
    return JsonResponse(v2.server_metadata(name=SERVER_NAME, version=SERVER_VERSION))


def _v2_target(request: HttpRequest, model: str, number: int | None):
    identity = authenticate(request)
    if identity.org_slug is None:
        raise NotFound("V2 model names resolve inside an API key's organization; call with an API key.")
    route = routing.resolve_route(identity.org_slug, model)
    if number is not None:
        return route, routing.resolve_version(route, number)
    if route.production is None:
        raise NotFound(f"{route.full_name} has no production version.")
    return route, route.production


def v2_model_metadata(request: HttpRequest, model: str, number: int | None = None) -> HttpResponse:
    try:
        route, target = _v2_target(request, model, number)
    except ModelhostError as exc:
        return _v2_error(exc)
    classes = target.classes
    body = v2.model_metadata(
        name=route.model_name,
        versions=[str(target.number)],
        platform=f"sklearn-{SKLEARN_VERSION}",
        spec=target.spec,
        has_proba=target.has_proba,
        n_classes=len(classes) if classes is not None else None,
        predict_datatype=v2.classes_datatype(classes) if classes else v2.TASK_DATATYPES.get(target.task),
        can_explain=target.task in EXPLAINED_TASKS,
    )
    return JsonResponse(body)


def v2_model_ready(request: HttpRequest, model: str, number: int | None = None) -> HttpResponse:
    try:
        route, _target = _v2_target(request, model, number)
    except ModelhostError as exc:
        return _v2_error(exc)
    return JsonResponse({"name": route.model_name, "ready": True})


@csrf_exempt
@answers_unexpected_errors(_v2_error)
def v2_infer(request: HttpRequest, model: str, number: int | None = None) -> HttpResponse:
    error = _method_check(request, "POST")
    if error is not None:
        return _v2_error(error)
    try:
        raw = read_body(request)
        header_length = request.META.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")
        content_type = request.META.get("CONTENT_TYPE")
        parsed_holder: dict = {}

        def parse() -> PredictionCall:
            call = PredictionCall(unit_id=request.META.get(UNIT_HEADER), want_proba=False, validate=None)

            def validate(target) -> ModelInput:
                parsed = v2.parse_infer_request(
                    raw, content_type=content_type, inference_header_length=header_length, spec=target.spec
                )
                v2.check_requested_outputs(parsed.outputs, has_proba=target.has_proba, can_explain=target.task in EXPLAINED_TASKS)
                call.want_proba = any(output.name == v2.PREDICT_PROBA for output in parsed.outputs)
                call.explain = any(output.name in v2.EXPLANATION_OUTPUTS for output in parsed.outputs)
                if call.explain and parsed.n_rows > settings.EXPLAIN_MAX_ROWS:
                    raise PayloadTooLarge(
                        f"{parsed.n_rows} rows is more than the {settings.EXPLAIN_MAX_ROWS} one request may ask to explain."
                    )
                parsed_holder["request"] = parsed
                inputs = parsed.inputs
                if isinstance(inputs, np.ndarray):
                    x = inputs
                    canonical = inputs.tobytes() + str(inputs.shape).encode()
                    recorded = inputs[:100].tolist()
                else:
                    x = to_model_input(inputs, target.spec)
                    canonical = orjson.dumps(inputs)
                    recorded = inputs
                return ModelInput(x=x, n_rows=parsed.n_rows, canonical=canonical, recorded=recorded)

            call.validate = validate
            return call

        outcome = run_prediction(
            request=request, org_slug=None, model_name=model, version_number=number, protocol="v2", parse=parse
        )
        parsed = parsed_holder["request"]
        body, content_type, headers = v2.render_infer_response(
            model_name=outcome.route.model_name,
            model_version=str(outcome.target.number),
            request_id=parsed.id,
            outputs=parsed.outputs,
            predictions=outcome.predictions,
            probabilities=outcome.probabilities,
            explanation=outcome.explanation,
        )
    except ModelhostError as exc:
        return _v2_error(exc)
    response = HttpResponse(body, content_type=content_type)
    for name, value in {**headers, **outcome.headers()}.items():
        response[name] = value
    return response


def _mlflow_error(exc: ModelhostError) -> HttpResponse:
    response = HttpResponse(mlflow_protocol.error_body(exc), status=exc.status, content_type="application/json")
    for name, value in exc.headers.items():
        response[name] = value
    return response


@csrf_exempt
@answers_unexpected_errors(_mlflow_error)
def invocations(request: HttpRequest, org: str, model: str, number: int | None = None) -> HttpResponse:
    error = _method_check(request, "POST")
    if error is not None:
        return _mlflow_error(error)
    try:
        raw = read_body(request)
        content_type = request.META.get("CONTENT_TYPE")

        def parse() -> PredictionCall:
            def validate(target) -> ModelInput:
                parsed = mlflow_protocol.parse_invocations(raw, content_type=content_type, spec=target.spec)
                if "explain" in parsed.params:
                    # MLflow's clients read only "predictions": an explanation here would be lost on them.
                    raise InvalidInput(
                        "MLflow's scoring protocol has no place for explanations: ask the native /predict endpoint "
                        '(parameters.explain) or V2 /infer (outputs "explanation" and "explanation_base").',
                        errors=[{"field": "params.explain", "message": "not supported on /invocations"}],
                    )
                return ModelInput(
                    x=to_model_input(parsed.rows, target.spec),
                    n_rows=parsed.n_rows,
                    canonical=orjson.dumps(parsed.rows),
                    recorded=parsed.rows,
                )

            return PredictionCall(unit_id=request.META.get(UNIT_HEADER), want_proba=False, validate=validate)

        outcome = run_prediction(
            request=request, org_slug=org, model_name=model, version_number=number, protocol="mlflow", parse=parse
        )
    except ModelhostError as exc:
        return _mlflow_error(exc)
    response = HttpResponse(mlflow_protocol.render_predictions(outcome.predictions), content_type="application/json")
    for name, value in outcome.headers().items():
        response[name] = value
    return response
