"""The sandboxed half of the upload check: load, describe and try one model; report JSON.

Run by ``sandbox.inspect_artifact`` as ``python -m registry.loaders.sandbox_child`` with
memory and CPU limits already set. Reads ``{"path", "fmt", "input_example"}`` as JSON on
stdin and writes one JSON object to the stdout it started with: ``{"ok": true, ...}``
or ``{"ok": false, "error": {"kind": ...}}``. Anything a library prints goes to stderr.

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


def inspect_request(request: dict[str, Any]) -> dict[str, Any]:
    """Load, describe and smoke-test the model a request names; return the success report."""
    from .describe import describe_estimator
    from .formats import load_artifact

    started = time.monotonic()
    loaded = load_artifact(request["path"], fmt=request["fmt"])
    description = describe_estimator(estimator=loaded.estimator, saved_sklearn_version=loaded.saved_sklearn_version)
    loaded_at = time.monotonic()
    sample = _predict_sample(loaded.estimator, description.n_features, description.feature_names, request.get("input_example"))
    return {
        "description": description.as_dict(),
        "sample": sample,
        "load_seconds": round(loaded_at - started, 4),
        "predict_seconds": round(time.monotonic() - loaded_at, 4),
    }


def _predict_sample(
    estimator: Any, n_features: int | None, feature_names: list[str] | None, input_example: Any
) -> dict[str, Any]:
    """Predict on the input example (a failure is the model's) or on a synthesized zero row (a failure is noted)."""
    import numpy as np

    if input_example:
        source = "input_example"
        X = _rows_to_input(input_example[:_MAX_EXAMPLE_ROWS], feature_names)
    elif n_features and not feature_names:
        # Without feature names the model was fitted on a plain numeric array.
        source = "zero_row"
        X = np.zeros((1, n_features))
    else:
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


def main() -> int:
    report_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the model or a library prints must not corrupt the report
    try:
        request = json.load(sys.stdin)
        report: dict[str, Any] = {"ok": True, **inspect_request(request)}
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a report
        report = {"ok": False, "error": _error_report(exc)}
    report["imported_django"] = "django" in sys.modules
    with os.fdopen(report_fd, "w") as out:
        json.dump(report, out)
    return 0


if __name__ == "__main__":
    register_bare_platform_site()
    sys.exit(main())
