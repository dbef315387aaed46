"""Turn request rows into the array or frame a model predicts on, naming any bad cell.

Rows arrive as lists in signature order or as objects keyed by feature name (one object
alone is one row). The whole batch is checked at once; a bad cell is a 400 naming its row
and column and what was expected.

Coercions (and only these): a float with no fraction is accepted for an integer column
(5.0 -> 5; MLflow refuses it); an integer is accepted for a float column; null is a
missing value (NaN) only where the signature allows missing values. Strings are never
turned into numbers, booleans are never turned into numbers, and NaN or infinity is
refused unless the column allows missing values.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from platform_site.errors import InvalidInput, PayloadTooLarge

NUMERIC = {"double", "float", "long", "integer"}
INTEGER = {"long", "integer"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    allow_missing: bool = False


@dataclass(frozen=True)
class InputSpec:
    """The part of a version's signature validation needs, precomputed once per version."""

    columns: tuple[Column, ...]
    named: bool
    # True when the model was fitted on a DataFrame (it has feature_names_in_) or takes strings.
    wants_frame: bool
    max_rows: int

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def forbids_missing(self) -> bool:
        """No column allows a missing value: validated input holds no NaN and no infinity."""
        return not any(c.allow_missing for c in self.columns)

    @property
    def all_numeric(self) -> bool:
        return all(c.type in NUMERIC for c in self.columns)

    @classmethod
    def from_signature(cls, signature: dict, *, wants_frame: bool, max_rows: int) -> InputSpec:
        columns = tuple(
            Column(name=c["name"], type=c.get("type", "double"), allow_missing=bool(c.get("allow_missing", False)))
            for c in signature.get("inputs", [])
        )
        has_strings = any(c.type not in NUMERIC for c in columns)
        return cls(columns=columns, named=bool(signature.get("named")), wants_frame=wants_frame or has_strings, max_rows=max_rows)


def _bad(row: int, column: str, message: str) -> InvalidInput:
    return InvalidInput(
        f"Row {row}, column '{column}': {message}.",
        errors=[{"row": row, "column": column, "message": message}],
    )


def normalise_rows(inputs: Any, spec: InputSpec) -> list[list[Any]]:
    """Rows as lists in signature order; objects are reordered by name."""
    if isinstance(inputs, dict):
        inputs = [inputs]
    if not isinstance(inputs, list):
        raise InvalidInput(
            "inputs must be a list of rows (lists or objects) or one object.",
            errors=[{"field": "inputs", "message": "expected a list of rows"}],
        )
    if not inputs:
        raise InvalidInput("inputs is empty: send at least one row.", errors=[{"field": "inputs", "message": "empty batch"}])
    if len(inputs) > spec.max_rows:
        raise PayloadTooLarge(
            f"{len(inputs)} rows is more than the limit of {spec.max_rows} per request; use a batch job for more.",
            errors=[{"field": "inputs", "message": f"more than {spec.max_rows} rows"}],
        )
    names = spec.names
    width = len(names)
    first = inputs[0]
    if not isinstance(first, (list, dict)):
        inputs = [inputs]  # one flat row sent without the outer list
        first = inputs[0]
    if isinstance(first, list):
        for index, row in enumerate(inputs):
            if not isinstance(row, list):
                raise _bad(index, "*", f"expected a list of {width} values like the other rows, got {type(row).__name__}")
            if len(row) != width:
                raise InvalidInput(
                    f"Row {index} has {len(row)} values; the model expects {width} ({', '.join(names)}).",
                    errors=[{"row": index, "column": "*", "message": f"expected {width} values, got {len(row)}"}],
                )
        return inputs
    rows = []
    known = set(names)
    for index, row in enumerate(inputs):
        if not isinstance(row, dict):
            raise _bad(index, "*", f"expected an object keyed by feature name like the other rows, got {type(row).__name__}")
        if len(row) != width or not known.issuperset(row):
            unknown = sorted(set(row) - known)
            if unknown:
                raise _bad(index, unknown[0], f"unknown feature; expected {', '.join(names)}")
            missing = [name for name in names if name not in row]
            column = next(c for c in spec.columns if c.name == missing[0])
            if not column.allow_missing:
                raise _bad(index, missing[0], "missing feature")
        rows.append([row.get(name) for name in names])
    return rows


def _check_cell(value: Any, column: Column, row: int) -> None:
    kind = column.type
    if value is None:
        if not column.allow_missing:
            raise _bad(row, column.name, f"missing value; expected {_expected(kind)}")
        return
    if kind in NUMERIC:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(row, column.name, f"expected {_expected(kind)}, got {_describe(value)}")
        if isinstance(value, float):
            if not math.isfinite(value):
                if not column.allow_missing:
                    raise _bad(row, column.name, f"expected a finite number, got {value}")
            elif kind in INTEGER and not value.is_integer():
                raise _bad(row, column.name, f"expected an integer, got {value}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise _bad(row, column.name, f"expected true or false, got {_describe(value)}")
    elif kind == "string":
        if not isinstance(value, str):
            raise _bad(row, column.name, f"expected a string, got {_describe(value)}")


def _expected(kind: str) -> str:
    return {
        "long": "an integer",
        "integer": "an integer",
        "double": "a number",
        "float": "a number",
        "boolean": "true or false",
        "string": "a string",
    }.get(kind, kind)


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (list, dict)):
        return f"a nested {type(value).__name__}"
    return repr(value)


# Past this many cells, the types are read in one C-level pass and finiteness by numpy (a 100 x 20
# request: about 60 us instead of 300); below it the plain loop is cheaper than making an array.
_VECTOR_CELLS = 64
_PLAIN_NUMBERS = frozenset((int, float))


def _plain_finite_numbers_loop(rows: list[list[Any]]) -> bool:
    for row in rows:
        for value in row:
            t = type(value)
            if t is float:
                if value != value or value in (math.inf, -math.inf):
                    return False
            elif t is not int:
                return False
    return True


def _plain_finite_numbers(rows: list[list[Any]]) -> bool:
    """Every cell an int or a finite float (never a bool, None or a string): as the loop, faster."""
    kinds = set(map(type, itertools.chain.from_iterable(rows)))
    if not kinds <= _PLAIN_NUMBERS:
        return False
    if float not in kinds:
        return True
    try:
        return bool(np.isfinite(np.array(rows, dtype=np.float64)).all())
    except (OverflowError, ValueError):  # an int past float64's range: the exact diagnosis says so
        return False


def check_rows(rows: list[list[Any]], spec: InputSpec) -> None:
    """Check every cell against its column; raises on the first bad one (row order)."""
    columns = spec.columns
    if spec.all_numeric and not any(c.allow_missing for c in columns):
        # Fast path: only ints and finite floats, then exact diagnosis only on failure.
        fine = _plain_finite_numbers(rows) if len(rows) * len(columns) > _VECTOR_CELLS else _plain_finite_numbers_loop(rows)
        if fine and not any(c.type in INTEGER for c in columns):
            return
    for index, row in enumerate(rows):
        for value, column in zip(row, columns, strict=True):
            _check_cell(value, column, index)


def to_model_input(rows: list[list[Any]], spec: InputSpec):
    """An ndarray (numeric, fitted without names) or a DataFrame in the model's column order."""
    if not spec.wants_frame:
        array = np.array(rows, dtype=np.float64)
        if array.ndim != 2:
            array = array.reshape(len(rows), -1)
        return array
    import pandas as pd

    frame = pd.DataFrame(rows, columns=spec.names)
    for column in spec.columns:
        if column.type in INTEGER and not column.allow_missing:
            frame[column.name] = frame[column.name].astype("int64")
        elif column.type in NUMERIC:
            frame[column.name] = frame[column.name].astype("float64")
        elif column.type == "boolean" and not column.allow_missing:
            frame[column.name] = frame[column.name].astype(bool)
    return frame


def validate_array(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Check a numeric tensor (V2, CSV) against the signature: width, finiteness, integers."""
    if array.ndim == 1:
        array = array.reshape(1, -1) if len(spec.columns) > 1 else array.reshape(-1, 1)
    if array.ndim != 2 or array.shape[1] != len(spec.columns):
        raise InvalidInput(
            f"The input has shape {list(array.shape)}; the model expects [rows, {len(spec.columns)}] ({', '.join(spec.names)}).",
            errors=[{"column": "*", "message": f"expected {len(spec.columns)} columns"}],
        )
    if array.shape[0] == 0:
        raise InvalidInput("The input is empty: send at least one row.", errors=[{"field": "inputs", "message": "empty batch"}])
    if array.shape[0] > spec.max_rows:
        raise PayloadTooLarge(
            f"{array.shape[0]} rows is more than the limit of {spec.max_rows} per request; use a batch job for more."
        )
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            allowed = np.array([c.allow_missing for c in spec.columns])
            bad = ~finite & ~allowed
            if bad.any():
                row, col = map(int, np.argwhere(bad)[0])
                raise _bad(row, spec.columns[col].name, f"expected a finite number, got {array[row, col]}")
        integer_cols = [i for i, c in enumerate(spec.columns) if c.type in INTEGER]
        if integer_cols:
            block = array[:, integer_cols]
            fractional = np.isfinite(block) & (block != np.floor(block))
            if fractional.any():
                row, col = map(int, np.argwhere(fractional)[0])
                raise _bad(row, spec.columns[integer_cols[col]].name, f"expected an integer, got {block[row, col]}")
    return array.astype(np.float64, copy=False)
