"""What a loaded numpy value may look like: canonical dtypes, plain object arrays.

A pickle rebuilds a dtype by calling ``numpy.dtype`` and then handing it BUILD state
(``__setstate__``) that sets its byte order, fields, item size and flags straight from the
file. numpy does not check that state against the type: an 'O8' dtype whose flags are
cleared no longer says ``hasobject``, so an array of it accepts raw bytes that numpy later
dereferences as object pointers. A dtype is therefore accepted only when it is exactly what
numpy builds from its own descriptor, flags included.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# numpy scalar kinds an object array may hold besides str, int, float, bool and None.
_PLAIN_SCALAR_KINDS = frozenset("biufU")


def dtype_problem(dtype: np.dtype) -> str | None:
    """Return why ``dtype`` is not what numpy builds from its descriptor, or None if it is."""
    try:
        rebuilt = _rebuild(dtype)
    except (TypeError, ValueError) as exc:
        return f"descriptor {dtype.str!r} cannot be rebuilt ({exc})"
    if isinstance(rebuilt, str):
        return rebuilt
    # Not ``num``: int64 fields may be NPY_LONG or NPY_LONGLONG, the same layout either way.
    for attribute in ("kind", "itemsize", "alignment", "flags", "hasobject", "byteorder", "names"):
        if getattr(dtype, attribute) != getattr(rebuilt, attribute):
            return (
                f"{attribute} is {getattr(dtype, attribute)!r} where numpy's own {rebuilt.str!r} dtype "
                f"has {getattr(rebuilt, attribute)!r}"
            )
    if dtype != rebuilt:
        return f"layout differs from numpy's own {rebuilt.str!r} dtype"
    return None


def _rebuild(dtype: np.dtype) -> np.dtype | str:
    if dtype.names is not None:
        formats, offsets, titles = [], [], []
        for name in dtype.names:
            field = dtype.fields[name]
            problem = dtype_problem(field[0])
            if problem is not None:
                return f"field {name!r}: {problem}"
            formats.append(field[0])
            offsets.append(field[1])
            titles.append(field[2] if len(field) > 2 else None)
        spec = {"names": list(dtype.names), "formats": formats, "offsets": offsets, "itemsize": dtype.itemsize}
        if any(title is not None for title in titles):
            spec["titles"] = titles
        return np.dtype(spec, align=dtype.isalignedstruct)
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        problem = dtype_problem(base)
        if problem is not None:
            return f"subarray base: {problem}"
        return np.dtype((base, shape))
    return np.dtype(dtype.str)


def array_problem(array: np.ndarray) -> str | None:
    """Return why a loaded array is unsafe to compute on, or None.

    Checks its dtype, that it does not view the memory of an object array (whose bytes are
    pointers), and that an object array holds only str, int, float, bool, None or numpy
    numbers and strings, or scikit-learn estimators (GradientBoosting's ``estimators_`` is
    an object array of trees; the caller walks them). Elements are read only after the
    dtype passed.
    """
    problem = dtype_problem(array.dtype)
    if problem is not None:
        return f"an array's numpy dtype {_dtype_name(array.dtype)} is not canonical: its {problem}"
    base = array.base
    while base is not None:
        owner = base.obj if isinstance(base, memoryview) else base
        if isinstance(owner, np.ndarray) and owner.dtype.hasobject and not array.dtype.hasobject:
            return "an array reads the memory of an object array (its bytes are pointers)"
        base = getattr(owner, "base", None) if owner is not base else None
    if not array.dtype.hasobject:
        return None
    if array.dtype.kind != "O":
        return "a structured array holds objects"
    from sklearn.base import BaseEstimator

    for value in np.asarray(array).ravel():  # a MaskedArray yields its data, not `masked`
        if not is_plain_value(value) and not (isinstance(value, BaseEstimator) and type(value).__module__.startswith("sklearn.")):
            return f"an object array holds a {type(value).__module__}.{type(value).__qualname__}"
    return None


def is_plain_value(value: Any) -> bool:
    """str, int, float, bool, None, or a numpy number, bool or str scalar."""
    if value is None or type(value) in (str, int, float, bool):
        return True
    return isinstance(value, np.generic) and value.dtype.kind in _PLAIN_SCALAR_KINDS


def _dtype_name(dtype: np.dtype) -> str:
    return "object" if dtype.kind == "O" else repr(dtype.str)
