"""Codecs for the outside inference protocols: bytes in, validated rows or arrays out.

`v2` speaks the Open Inference Protocol (KServe V2) REST with Triton's binary tensor data
extension; `mlflow` speaks MLflow's scoring protocol (`POST /invocations`). Both are pure
functions over bytes, headers and an `InputSpec`: no Django, no I/O. They raise the
platform's errors (`platform_site.errors`); the views render those in each protocol's own
error shape with the `error_body` helpers each module provides.
"""

from __future__ import annotations

from inference.validation import InputSpec
from platform_site.errors import InvalidInput, ModelhostError, PayloadTooLarge


def describe_error(exc: BaseException) -> str:
    """One readable message for a client: the error's detail, or, when that is only its generic
    title, the title followed by each row/column error."""
    if not isinstance(exc, ModelhostError):
        # Anything else is a bug on our side; its text may leak internals.
        return "Internal error while serving the prediction."
    if not exc.errors or exc.detail != exc.title:
        return exc.detail
    parts = []
    for error in exc.errors:
        where = []
        if error.get("row") is not None:
            where.append(f"row {error['row']}")
        if error.get("column") not in (None, "*"):
            where.append(f"column '{error['column']}'")
        if error.get("field"):
            where.append(str(error["field"]))
        text = error.get("message", "invalid")
        parts.append(f"{', '.join(where)}: {text}" if where else text)
    return f"{exc.title}: {'; '.join(parts)}."


def check_row_count(count: int, spec: InputSpec) -> None:
    """Refuse an empty batch (400) or one over the per-request limit (413), before decoding it."""
    if count == 0:
        raise InvalidInput("The input is empty: send at least one row.", errors=[{"field": "inputs", "message": "empty batch"}])
    if count > spec.max_rows:
        raise PayloadTooLarge(
            f"{count} rows is more than the limit of {spec.max_rows} per request; use a batch job for more.",
            errors=[{"field": "inputs", "message": f"more than {spec.max_rows} rows"}],
        )
