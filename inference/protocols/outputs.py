"""A model's outputs as JSON values that keep the labels' own types.

`estimator.predict` returns its `classes_`' dtype: int64 or float64, bool, fixed-width
unicode ('<U3') when fitted on a list of strings, an object array of str when fitted on a
pandas column; multi-output classifiers' `predict_proba` is a list of arrays, one per
output. orjson writes numeric and bool ndarrays natively (and fast) but refuses unicode
and object arrays, so those become lists of plain Python scalars here: numpy scalars
unwrapped, bytes decoded as UTF-8. A string label stays a string, a bool a bool.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_NATIVE_KINDS = "biuf"


def json_values(values: Any) -> Any:
    """`values` (an ndarray, a list of them, or a scalar) in a form orjson's OPT_SERIALIZE_NUMPY writes."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind in _NATIVE_KINDS and values.dtype.isnative:
            return np.ascontiguousarray(values)  # orjson refuses non-contiguous arrays
        return _plain(values.tolist())
    if isinstance(values, (list, tuple)):
        return [json_values(item) for item in values]
    return _plain(values)


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value
