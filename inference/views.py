"""Web page "Try it": a form generated from a version's signature that calls the real
predict endpoint from the browser, and the same request as copyable snippets.

The browser posts to `POST /api/v1/models/{org}/{model}/versions/{n}/predict` with its
session and the X-CSRFToken header (static/js/app.js), so the page exercises exactly the
path programs use; this view only renders the form and the snippets. The snippets show the
values in the form: the form's values come back here as a query string (htmx asks for the
snippets alone as the user types; without JavaScript, the form's submit reloads the page).
"""

from __future__ import annotations

import json
import pprint
import shlex
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.cache import patch_vary_headers

from accounts.views import render_page
from platform_site.errors import InvalidInput, NotFound
from registry import selectors, signatures
from registry.views import model_or_404

NUMERIC = {"double", "float", "long", "integer"}
V2_DATATYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL", "string": "BYTES"}


def _example_row(version, columns: list[dict]) -> list[Any]:
    """The first row of the input example in signature order; None where it says nothing."""
    if version.input_example is None:
        return [None] * len(columns)
    try:
        names, rows = signatures.example_rows(version.input_example)
    except InvalidInput:
        return [None] * len(columns)
    if not rows:
        return [None] * len(columns)
    if names:
        by_name = dict(zip(names, rows[0], strict=True))
        return [by_name.get(column["name"]) for column in columns]
    return list(rows[0])[: len(columns)] + [None] * max(0, len(columns) - len(rows[0]))


def _typed_value(kind: str, raw: str) -> Any:
    """A form value as the JSON the page's script sends: numbers and booleans parsed, the rest kept as typed."""
    if raw == "":
        return None
    if kind in NUMERIC:
        try:
            number = float(raw)
        except ValueError:
            return raw
        return int(number) if kind in ("long", "integer") and number.is_integer() else number
    if kind == "boolean" and raw in ("true", "false"):
        return raw == "true"
    return raw


def _typed_row(query, columns: list[dict]) -> list[Any] | None:
    """The row typed into the form, when the query string carries it (else None)."""
    if not any(column["name"] in query for column in columns):
        return None
    return [_typed_value(column.get("type", "double"), query.get(column["name"], "").strip()) for column in columns]


def _field(index: int, column: dict, value: Any) -> dict:
    kind = column.get("type", "double")
    if kind == "boolean":
        widget = "select"
    elif kind in NUMERIC:
        widget = "number"
    else:
        widget = "text"
    step = "1" if kind in ("long", "integer") else "any"
    shown = "" if value is None else (str(value).lower() if isinstance(value, bool) else value)
    return {"id": f"col-{index}", "name": column["name"], "type": kind, "widget": widget, "step": step, "value": shown}


def _snippets(
    *,
    base: str,
    org: str,
    model: str,
    number: int,
    columns: list[dict],
    row: list[Any],
    want_proba: bool,
    fill_missing: bool = True,
) -> dict[str, str]:
    """The request for `row` in four clients; with `fill_missing`, a value the example leaves out is 0 or ""."""
    names = [column["name"] for column in columns]
    if fill_missing:
        values = [
            (0 if column.get("type", "double") in NUMERIC else "") if value is None else value
            for column, value in zip(columns, row, strict=True)
        ]
    else:
        values = list(row)
    native_body = {"inputs": [values]}
    if want_proba:
        native_body["parameters"] = {"probabilities": True}
    predict_url = f"{base}/api/v1/models/{org}/{model}/versions/{number}/predict"
    if all(column.get("type", "double") in NUMERIC for column in columns):
        data = [float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in values]
        v2_inputs = [{"name": "input-0", "shape": [1, len(values)], "datatype": "FP64", "data": [data]}]
    else:
        v2_inputs = [
            {"name": name, "shape": [1], "datatype": V2_DATATYPES.get(column.get("type", "double"), "BYTES"), "data": [value]}
            for name, column, value in zip(names, columns, values, strict=True)
        ]
    v2_body = {"inputs": v2_inputs}
    mlflow_body = {"dataframe_split": {"columns": names, "data": [values]}}

    def curl(url: str, body: dict) -> str:
        return (
            f"curl -X POST {url} \\\n"
            '  -H "X-API-Key: $MODELHOST_API_KEY" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f"  -d {shlex.quote(json.dumps(body))}"
        )

    python_body = pprint.pformat(native_body, width=88, sort_dicts=False).replace("\n", "\n    ")
    python = (
        "import os\n\nimport requests\n\n"
        "response = requests.post(\n"
        f'    "{predict_url}",\n'
        '    headers={"X-API-Key": os.environ["MODELHOST_API_KEY"]},\n'
        f"    json={python_body},\n"
        "    timeout=10,\n"
        ")\n"
        "response.raise_for_status()\n"
        'print(response.json()["predictions"])'
    )
    return {
        "curl": curl(predict_url, native_body),
        "python": python,
        "v2": curl(f"{base}/v2/models/{model}/versions/{number}/infer", v2_body),
        "mlflow": curl(f"{base}/api/v1/models/{org}/{model}/versions/{number}/invocations", mlflow_body),
    }


def _explain_offer(version) -> dict | None:
    """Whether Try it offers an explanation: None where no explainer applies (outliers,
    clusters); unchecked, with the reason, where one would need reference data the version lacks."""
    from inference.runners.explainers import explains_without_reference

    if version.task not in ("classification", "regression"):
        return None
    if version.reference_data or explains_without_reference(version.estimator_class):
        return {"available": True}
    return {
        "available": False,
        "reason": "This version has no reference data to compare with: upload one with reference_data to explain it.",
    }


@login_required
def try_version(request: HttpRequest, org: str, model: str, number: int) -> HttpResponse:
    registered = model_or_404(request, org, model)
    try:
        version = selectors.version_of(model=registered, number=number)
    except NotFound:
        raise Http404("No such version.") from None
    columns = version.signature.get("inputs", [])
    typed = _typed_row(request.GET, columns)
    row = typed if typed is not None else _example_row(version, columns)
    base = request.build_absolute_uri("/").rstrip("/")
    snippets = _snippets(
        base=base,
        org=org,
        model=model,
        number=number,
        columns=columns,
        row=row,
        want_proba=version.has_predict_proba,
        fill_missing=typed is None,
    )
    context = {
        "organization": registered.organization,
        "model": registered,
        "version": version,
        "snippets": snippets,
        "is_typed": typed is not None,
    }
    if request.htmx and not request.htmx.history_restore_request:
        response = render_page(request, "inference/_snippets.html", context)
    else:
        context.update(
            {
                "fields": [_field(i, column, value) for i, (column, value) in enumerate(zip(columns, row, strict=True))],
                "columns_data": [{"name": c["name"], "type": c.get("type", "double")} for c in columns],
                "predict_url": reverse("predict-version", args=[org, model, number]),
                "want_proba": version.has_predict_proba,
                "explain": _explain_offer(version),
                "tab": "models",
            }
        )
        response = render_page(request, "inference/try.html", context)
    # The same URL answers the snippets alone to htmx and the page otherwise.
    patch_vary_headers(response, ("HX-Request",))
    return response


@login_required
def version_importance(request: HttpRequest, org: str, model: str, number: int) -> HttpResponse:
    """The version's global feature importance (mean |contribution| over its reference data):
    a fragment the model page loads with htmx, or a page of its own without JavaScript."""
    from inference.explanations import global_importance
    from platform_site.errors import ModelhostError

    registered = model_or_404(request, org, model)
    try:
        version = selectors.version_of(model=registered, number=number)
    except NotFound:
        raise Http404("No such version.") from None
    context: dict[str, Any] = {"organization": registered.organization, "model": registered, "version": version, "tab": "models"}
    try:
        importance = global_importance(version=version)
    except ModelhostError as exc:
        context["unavailable"] = exc.detail
    else:
        largest = max((item["importance"] for item in importance["features"]), default=0.0) or 1.0
        context["importance"] = importance
        context["method_label"] = importance["method"].replace("_", " ")
        context["bars"] = [{**item, "percent": round(100 * item["importance"] / largest, 1)} for item in importance["features"]]
    template = "inference/_importance.html" if request.htmx else "inference/importance.html"
    response = render_page(request, template, context)
    patch_vary_headers(response, ("HX-Request",))
    return response
