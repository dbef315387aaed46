"""Safe loading and inspection of tenants' scikit-learn model files.

Public entry points (imported lazily, so ``python -m registry.loaders.sandbox_child``
can prepare its imports before anything here pulls in the platform):

- ``inspect_artifact``: the upload-time check, in a resource-limited child process;
- ``load_model`` / ``load_artifact``: the same safe load, in-process, for serving;
- ``detect_format``: which loader a file needs;
- ``extract_mlflow_archive`` / ``read_mlflow_model``: MLflow model folders uploaded as zip;
- ``describe_estimator``: what a loaded model is and serves;
- ``audit_pickle_globals`` / ``audit_skops_types``: the allow-list audits on their own.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "inspect_artifact": "sandbox",
    "load_model": "formats",
    "load_artifact": "formats",
    "detect_format": "formats",
    "LoadedArtifact": "formats",
    "extract_mlflow_archive": "archive",
    "read_mlflow_model": "archive",
    "MlflowModel": "archive",
    "ZipLimits": "archive",
    "describe_estimator": "describe",
    "ModelDescription": "describe",
    "audit_pickle_globals": "safe_pickle",
    "load_pickle": "safe_pickle",
    "audit_skops_types": "skops_format",
    "check_model_structures": "structure",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
