"""Web page "Try it": a form generated from a version's signature that calls the real
predict endpoint from the browser, and the same request as copyable snippets.

The browser posts to `POST /api/v1/models/{org}/{model}/versions/{n}/predict` with its
session and the X-CSRFToken header (static/js/app.js), so the page exercises exactly the
path programs use; this view only renders the form and the snippets.
"""
from __future__ import annotations

import json
import pprint
import shlex
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse

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
        by_name = dict(zip(names, rows[0]))
        return [by_name.get(column["name"]) for column in columns]
    return list(rows[0])[: len(columns)] + [None] * max(0, len(columns) - len(rows[0]))


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


def _snippets(*, base: str, org: str, model: str, number: int, columns: list[dict], row: list[Any], want_proba: bool) -> dict[str, str]:
    names = [column["name"] for column in columns]
    values = [(0 if column.get("type", "double") in NUMERIC else "") if value is None else value for column, value in zip(columns, row)]
    native_body = {"inputs": [values]}
    if want_proba:
        native_body["parameters"] = {"probabilities": True}
    predict_url = f"{base}/api/v1/models/{org}/{model}/versions/{number}/predict"
    if all(column.get("type", "double") in NUMERIC for column in columns):
        v2_inputs = [{"name": "input-0", "shape": [1, len(values)], "datatype": "FP64", "data": [[float(v) for v in values]]}]
    else:
        v2_inputs = [
            {"name": name, "shape": [1], "datatype": V2_DATATYPES.get(column.get("type", "double"), "BYTES"), "data": [value]}
            for name, column, value in zip(names, columns, values)
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


@login_required
def try_version(request: HttpRequest, org: str, model: str, number: int) -> HttpResponse:
    registered = model_or_404(request, org, model)
    try:
        version = selectors.version_of(model=registered, number=number)
    except NotFound:
        raise Http404("No such version.") from None
    columns = version.signature.get("inputs", [])
    row = _example_row(version, columns)
    base = request.build_absolute_uri("/").rstrip("/")
    return render_page(
        request,
        "inference/try.html",
        {
            "organization": registered.organization,
            "model": registered,
            "version": version,
            "fields": [_field(i, column, value) for i, (column, value) in enumerate(zip(columns, row))],
            "columns_data": [{"name": c["name"], "type": c.get("type", "double")} for c in columns],
            "predict_url": reverse("predict-version", args=[org, model, number]),
            "want_proba": version.has_predict_proba,
            "snippets": _snippets(base=base, org=org, model=model, number=number, columns=columns, row=row, want_proba=version.has_predict_proba),
            "tab": "models",
        },
    )
