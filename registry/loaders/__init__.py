"""Safe loading and inspection of tenants' scikit-learn model files.

Public entry points are imported lazily, so ``python -m registry.loaders.sandbox_child``
can prepare its imports before anything here pulls in the platform.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_model": "formats",
    "load_artifact": "formats",
    "detect_format": "formats",
    "LoadedArtifact": "formats",
    "extract_mlflow_archive": "archive",
    "read_mlflow_model": "archive",
    "MlflowModel": "archive",
    "ZipLimits": "archive",
    "audit_skops_types": "skops_format",
    "describe_estimator": "describe",
    "ModelDescription": "describe",
    "audit_pickle_globals": "safe_pickle",
    "load_pickle": "safe_pickle",
    "check_model_structures": "structure",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
