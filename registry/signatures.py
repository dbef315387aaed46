"""A version's input signature: named, typed columns in the order the model expects.

Shape: `{"inputs": [{"name": "sepal_length", "type": "double"}, ...], "source": "...",
"named": true}`. Types follow MLflow's column types (double, float, long, integer,
boolean, string). `named` is false when only the column count is known; then the names
are f0..fN-1 and callers send rows as lists.

Sources, first that applies wins: the MLflow signature, the input example, the reference
data's columns, the estimator's `feature_names_in_`, its `n_features_in_`.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from platform_site.errors import InvalidInput

NUMERIC_TYPES = {"double", "float", "long", "integer"}
KNOWN_TYPES = NUMERIC_TYPES | {"boolean", "string"}


def _value_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "double"  # a missing value in an example says nothing about the column; NaN is a double
    raise InvalidInput(
        f"The input example holds a {type(value).__name__}; only numbers, strings and booleans are supported.",
        errors=[{"field": "input_example", "message": f"unsupported value {value!r}"}],
    )


def _merge_types(seen: str | None, new: str) -> str:
    if seen is None or seen == new:
        return new
    if {seen, new} <= NUMERIC_TYPES:
        return "double"
    return "string"


def example_rows(example: Any) -> tuple[list[str] | None, list[list[Any]]]:
    """Normalise an input example (records, split, one record, or list rows) to (names, rows)."""
    if isinstance(example, dict) and "dataframe_split" in example:
        example = example["dataframe_split"]
    if isinstance(example, dict) and "dataframe_records" in example:
        example = example["dataframe_records"]
    if isinstance(example, dict) and "inputs" in example and len(example) <= 2:
        example = example["inputs"]
    if isinstance(example, dict) and "columns" in example and "data" in example:
        names = [str(c) for c in example["columns"]]
        rows = [list(row) for row in example["data"]]
        widths = sorted({len(row) for row in rows} - {len(names)})
        if widths:
            raise InvalidInput(
                f"The input example names {len(names)} columns but has rows of {', '.join(map(str, widths))} values.",
                errors=[{"field": "input_example", "message": f"expected {len(names)} values a row, got {widths[0]}"}],
            )
        return names, rows
    if isinstance(example, dict):
        example = [example]
    if not isinstance(example, list) or not example:
        raise InvalidInput(
            "The input example must be a non-empty list of rows, a record, or {columns, data}.",
            errors=[{"field": "input_example", "message": "expected rows, records or {columns, data}"}],
        )
    if all(isinstance(row, dict) for row in example):
        names: list[str] = []
        for row in example:
            names.extend(str(k) for k in row if str(k) not in names)
        return names, [[row.get(name) for name in names] for row in example]
    if all(isinstance(row, list) for row in example):
        widths = {len(row) for row in example}
        if len(widths) != 1:
            raise InvalidInput(
                "The input example's rows have different lengths.",
                errors=[{"field": "input_example", "message": f"row lengths {sorted(widths)}"}],
            )
        return None, [list(row) for row in example]
    if all(not isinstance(value, (list, dict)) for value in example):
        return None, [list(example)]  # one row given as a flat list
    raise InvalidInput(
        "The input example mixes rows of different shapes.",
        errors=[{"field": "input_example", "message": "mix of lists and objects"}],
    )


def without_nan(example: Any) -> Any:
    """The example with NaN and infinity as null.

    MLflow writes them into input_example.json; JSON (and PostgreSQL's jsonb) has none.
    """
    if isinstance(example, float) and not math.isfinite(example):
        return None
    if isinstance(example, list):
        return [without_nan(item) for item in example]
    if isinstance(example, dict):
        return {key: without_nan(value) for key, value in example.items()}
    return example


def from_example(example: Any) -> dict:
    """Types from the example's values; a column the example leaves empty (null or NaN) in some row allows missing values."""
    names, rows = example_rows(example)
    width = len(rows[0]) if rows else len(names or [])
    types: list[str | None] = [None] * width
    missing: set[int] = set()
    for row in rows:
        for i, value in enumerate(row):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                missing.add(i)
                continue
            types[i] = _merge_types(types[i], _value_type(value))
    named = names is not None
    names = names or [f"f{i}" for i in range(width)]
    return _signature(names, [t or "double" for t in types], "input_example", named, optional={names[i] for i in missing})


def from_mlflow(inputs: list[dict]) -> dict:
    names, types = [], []
    for i, column in enumerate(inputs):
        kind = column.get("type", "double")
        if kind == "tensor":
            # A tensor spec names no columns: the count comes from the shape's last axis.
            shape = column.get("tensor-spec", {}).get("shape", [])
            width = shape[-1] if shape and shape[-1] not in (-1, None) else None
            if width is None:
                return {}
            dtype = column.get("tensor-spec", {}).get("dtype", "float64")
            kind = "string" if dtype in ("str", "object") else ("long" if "int" in dtype else "double")
            return _signature([f"f{j}" for j in range(width)], [kind] * width, "mlflow", False)
        names.append(str(column.get("name", f"f{i}")))
        types.append(kind if kind in KNOWN_TYPES else "string")
    has_names = any("name" in column for column in inputs)
    # MLflow marks a column the example left empty `"required": false`.
    optional = {name for name, column in zip(names, inputs, strict=True) if column.get("required") is False}
    return _signature(names, types, "mlflow", has_names, optional=optional)


def from_dataframe_dtypes(columns: list[str], dtypes: list[str], source: str) -> dict:
    mapping = {"int": "long", "float": "double", "bool": "boolean"}
    types = [next((v for k, v in mapping.items() if dtype.startswith(k)), "string") for dtype in dtypes]
    return _signature([str(c) for c in columns], types, source, True)


def from_estimator(*, feature_names: list[str] | None, n_features: int | None) -> dict:
    if feature_names:
        return _signature(list(feature_names), ["double"] * len(feature_names), "feature_names_in", True)
    if n_features:
        return _signature([f"f{i}" for i in range(n_features)], ["double"] * n_features, "n_features_in", False)
    return {}


def _signature(names: list[str], types: list[str], source: str, named: bool, *, optional: set[str] = frozenset()) -> dict:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInput(
            f"The signature repeats column names: {', '.join(duplicates)}.",
            errors=[{"field": "signature", "message": f"duplicate column {n}"} for n in duplicates],
        )
    inputs = [
        {"name": n, "type": t, **({"allow_missing": True} if n in optional else {})} for n, t in zip(names, types, strict=True)
    ]
    return {"inputs": inputs, "source": source, "named": named}


def column_names(signature: dict) -> list[str]:
    return [column["name"] for column in signature.get("inputs", [])]


def parse_json_field(raw: str | bytes | None, *, field: str) -> Any:
    """Parse a JSON value sent as a multipart form field, naming the field when it is bad."""
    if raw in (None, ""):
        return None
    if hasattr(raw, "read"):
        raw = raw.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{field} is not valid JSON: {exc}.", errors=[{"field": field, "message": "not valid JSON"}]) from None
