"""The sandboxed half of the upload check: load, describe and try one model; report JSON.

Run by ``sandbox.inspect_artifact`` as ``python -m registry.loaders.sandbox_child`` with
memory and CPU limits already set, or forked by the fork server (``sandbox_server``) with the
model file open as its stdin. The subprocess reads ``{"path", "fmt", "input_example"}`` as
JSON on stdin; both write (``write_report``) to the stdout they started with one JSON object, ``{"ok": true, ...}`` or
``{"ok": false, "error": {"kind": ...}}``, a newline, and then, on success, the serving
artifact's bytes followed by the compiled artifact's (the report's ``serving_artifact_bytes``
and ``compiled_artifact_bytes`` say how many; the child may not write files). Anything a library prints goes to stderr.

Every ``n_jobs`` parameter of the model (its own and its steps') is set to 1 before it
predicts, and so in the serving artifact: a sandbox child and a runner may not create files
(RLIMIT_FSIZE 0), and joblib's thread pool makes a POSIX semaphore, a file in /dev/shm, so a
model fitted with ``n_jobs=2`` failed with "File too large" in both. Runners parallelize
across processes instead.

The model always predicts: on its input example, or else on rows synthesized from what it
says of itself (``n_features_in_``, ``feature_names_in_``, and for encoders the categories
they know: a known category for a categorical column, 0.0 for the rest).

It never imports Django or Celery: ``platform_site/__init__.py`` starts the Celery app
(which imports Django), so ``platform_site`` is registered as a bare package first and
only the plain ``platform_site.errors`` module is imported from it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parents[2]
_MAX_EXAMPLE_ROWS = 100
_MAX_REPORTED_PREDICTIONS = 5


def register_bare_platform_site() -> None:
    """Make ``platform_site.errors`` importable without running ``platform_site/__init__.py``."""
    if "platform_site" in sys.modules:
        return
    package = types.ModuleType("platform_site")
    package.__path__ = [str(_REPO_ROOT / "platform_site")]
    package.__package__ = "platform_site"
    sys.modules["platform_site"] = package


class _PredictionFailed(Exception):
    """The model loaded but could not predict on its own input example."""


def inspect_request(request: dict[str, Any], *, model_fd: int | None = None) -> tuple[dict[str, Any], bytes]:
    """Load, describe and smoke-test the model a request names (its ``path``, or the estimator
    file open as `model_fd`, of format ``fmt``); return the report and the serving artifact."""
    import pickle

    from .describe import describe_estimator
    from .formats import load_artifact, load_artifact_from_fd
    from .serving import linear_spec_for

    started = time.monotonic()
    # Both loads run the audit, the restricted unpickler and the structure/dtype/object checks.
    if model_fd is None:
        loaded = load_artifact(request["path"], fmt=request["fmt"])
    else:
        loaded = load_artifact_from_fd(
            model_fd, fmt=request["fmt"], fallback_sklearn_version=request.get("saved_sklearn_version")
        )
    description = describe_estimator(estimator=loaded.estimator, saved_sklearn_version=loaded.saved_sklearn_version)
    single_threaded(loaded.estimator)
    loaded_at = time.monotonic()
    sample = _predict_sample(loaded.estimator, description.n_features, description.feature_names, request.get("input_example"))
    predicted_at = time.monotonic()
    artifact = pickle.dumps(loaded.estimator, protocol=5)
    artifact_at = time.monotonic()
    compiled = _compiled_form(loaded.estimator, description.feature_names, request.get("input_example"))
    report = {
        "description": description.as_dict(),
        "sample": sample,
        "linear_spec": linear_spec_for(loaded.estimator),
        "serving_artifact_bytes": len(artifact),
        "compiled": {"reason": compiled.reason, "figures": compiled.figures},
        "compiled_artifact_bytes": len(compiled.artifact or b""),
        "load_seconds": round(loaded_at - started, 4),
        "predict_seconds": round(predicted_at - loaded_at, 4),
        "artifact_seconds": round(artifact_at - predicted_at, 4),
        "compile_seconds": round(time.monotonic() - artifact_at, 4),
    }
    return report, artifact + (compiled.artifact or b"")


def _compiled_form(estimator: Any, feature_names: list[str] | None, input_example: Any):
    """The tree ensemble's verified compiled form (``compiled.compile_estimator``), checked on the
    input example's rows too when it has one."""
    from .compiled import compile_estimator

    examples = None
    if input_example:
        try:
            examples = _rows_to_input(input_example[:_MAX_EXAMPLE_ROWS], feature_names)
        except _PredictionFailed:
            examples = None
    return compile_estimator(estimator, examples=examples)


def single_threaded(estimator: Any) -> None:
    """Set every ``n_jobs`` parameter of the estimator and its nested steps to 1, in place."""
    get_params = getattr(estimator, "get_params", None)
    if get_params is None:
        return
    names = [name for name in get_params(deep=True) if name == "n_jobs" or name.endswith("__n_jobs")]
    if names:
        estimator.set_params(**{name: 1 for name in names})


def _predict_sample(
    estimator: Any, n_features: int | None, feature_names: list[str] | None, input_example: Any
) -> dict[str, Any]:
    """Predict on the input example (a failure is the model's) or on synthesized rows (a failure is noted)."""
    import numpy as np

    if input_example:
        source = "input_example"
        X = _rows_to_input(input_example[:_MAX_EXAMPLE_ROWS], feature_names)
    else:
        source = "synthesized"
        X = synthesized_rows(estimator, n_features=n_features, feature_names=feature_names)
        if X is None:
            return {"source": None}
    try:
        predictions = estimator.predict(X)
    except MemoryError:
        raise
    except Exception as exc:  # the model's own code failed; report its message
        if source == "input_example":
            raise _PredictionFailed(f"{type(exc).__name__}: {exc}") from exc
        return {"source": source, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    values = np.asarray(predictions)[:_MAX_REPORTED_PREDICTIONS].tolist()
    return {"source": source, "ok": True, "predictions": _json_safe(values)}


def synthesized_rows(estimator: Any, *, n_features: int | None, feature_names: list[str] | None) -> Any:
    """One row the model should accept, from what it says of itself, or None when it says too little.

    A column an encoder (OneHotEncoder, OrdinalEncoder, TargetEncoder...) reads gets the
    first category it knows; every other column 0.0. A DataFrame when the model was fitted
    on one (``feature_names_in_``), else an array.
    """
    import numpy as np

    width = len(feature_names) if feature_names else n_features
    if not width:
        return None
    keys: list[Any] = list(feature_names) if feature_names else list(range(width))
    known = _known_categories(estimator, keys)
    row = [known.get(key, 0.0) for key in keys]
    if feature_names:
        import pandas as pd

        return pd.DataFrame([row], columns=feature_names)
    if known:
        return np.array([row], dtype=object)
    return np.zeros((1, width))


def _known_categories(estimator: Any, keys: list[Any]) -> dict[Any, Any]:
    """{input column: a category an encoder fitted on it knows}, through pipelines and column transformers."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    found: dict[Any, Any] = {}
    # (step, the input columns it reads, as keys of the model's own input)
    pending: list[tuple[Any, list[Any]]] = [(estimator, keys)]
    while pending:
        step, columns = pending.pop()
        if isinstance(step, Pipeline):
            # Steps before an encoder (imputers) keep their columns; an encoder's categories must match them.
            pending.extend((inner, columns) for _, inner in step.steps if inner not in (None, "passthrough"))
        elif isinstance(step, ColumnTransformer):
            for _, transformer, selection in getattr(step, "transformers_", []):
                selected = _selected_columns(selection, columns)
                if selected and transformer not in ("drop", "passthrough"):
                    pending.append((transformer, selected))
        else:
            categories = getattr(step, "categories_", None)
            if isinstance(categories, list) and len(categories) == len(columns):
                for key, values in zip(columns, categories, strict=True):
                    value = _first_plain_category(values)
                    if value is not None:
                        found.setdefault(key, value)
    return found


def _selected_columns(selection: Any, columns: list[Any]) -> list[Any]:
    import numpy as np

    if isinstance(selection, str):
        selection = [selection]
    if isinstance(selection, (int, np.integer)):
        selection = [int(selection)]
    if isinstance(selection, slice):
        return columns[selection]
    try:
        items = list(selection)
    except TypeError:
        return []
    if items and all(isinstance(item, (bool, np.bool_)) for item in items):
        # The mask comes from the uploaded model: a length that does not match is not ours to refuse here.
        return [column for column, keep in zip(columns, items, strict=False) if keep]
    if all(isinstance(item, (int, np.integer)) for item in items):
        return [columns[int(i)] for i in items if -len(columns) <= int(i) < len(columns)]
    return [item for item in items if item in columns]


def _first_plain_category(values: Any) -> Any:
    import numpy as np

    for value in values:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str) or (isinstance(value, (int, float)) and value == value):  # not NaN
            return value
    return None


def _rows_to_input(rows: list[Any], feature_names: list[str] | None) -> Any:
    import numpy as np
    import pandas as pd

    if not isinstance(rows, list) or not rows:
        raise _PredictionFailed("The input example is not a list of rows.")
    if all(isinstance(row, dict) for row in rows):
        frame = pd.DataFrame(rows)
        if feature_names is None:
            return frame
        missing = [name for name in feature_names if name not in frame.columns]
        if missing:
            raise _PredictionFailed(f"The input example lacks the model's columns: {', '.join(missing)}")
        return frame[feature_names]
    if not all(isinstance(row, list) for row in rows):
        raise _PredictionFailed("The input example mixes dict rows and list rows.")
    if feature_names is not None and all(len(row) == len(feature_names) for row in rows):
        return pd.DataFrame(rows, columns=feature_names)
    numeric = all(value is None or isinstance(value, (int, float)) for row in rows for value in row)
    try:
        return np.array(rows, dtype=float if numeric else object)
    except ValueError as exc:  # ragged rows
        raise _PredictionFailed(f"The input example's rows do not form a table: {exc}") from exc


def _json_safe(value: Any) -> Any:
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _error_report(exc: BaseException) -> dict[str, Any]:
    from platform_site.errors import ModelhostError

    if isinstance(exc, MemoryError):
        return {"kind": "memory"}
    if isinstance(exc, _PredictionFailed):
        return {"kind": "predict", "message": str(exc)}
    if isinstance(exc, ModelhostError):
        return {
            "kind": "refused",
            "class": type(exc).__name__,
            "detail": exc.detail,
            "refused_globals": list(getattr(exc, "refused_globals", [])),
        }
    return {"kind": "load", "message": f"{type(exc).__name__}: {exc}"}


def write_report(*, request: dict[str, Any] | None, model_fd: int | None = None) -> None:
    """Check the model and write the report, a newline and the artifact to stdout (fd 1).

    With no `request`, it is read as JSON from stdin (the subprocess); the fork server's child
    passes its request and has the model file as `model_fd`.
    """
    report_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the model or a library prints must not corrupt the report
    artifact = b""
    try:
        if request is None:
            request = json.load(sys.stdin)
        found, artifact = inspect_request(request, model_fd=model_fd)
        report: dict[str, Any] = {"ok": True, **found}
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a report
        report = {"ok": False, "error": _error_report(exc)}
    report["imported_django"] = "django" in sys.modules
    with os.fdopen(report_fd, "wb") as out:
        # JSON escapes newlines inside strings, so the first newline ends the report.
        out.write(json.dumps(report).encode() + b"\n")
        out.write(artifact)


def main() -> int:
    write_report(request=None)
    return 0


if __name__ == "__main__":
    register_bare_platform_site()
    sys.exit(main())
