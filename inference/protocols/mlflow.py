"""MLflow scoring protocol codec (`POST /invocations`), matching MLflow 3.17's scoring server.

Requests: `application/json` with exactly one of `dataframe_split`, `dataframe_records`,
`instances` or `inputs`, plus optional `params`; `text/csv` with a header row; and
`application/vnd.apache.parquet` where pyarrow is installed. As in MLflow, the only content
type parameter accepted is `charset=utf-8`: the pre-2.0 `format=pandas-split` parameters
answer 415. Unlike MLflow, unknown columns are refused rather than silently dropped, and
every bad cell is named by row and column.

Every format ends as one representation: `ParsedInvocation.rows`, a list of rows (lists in
signature order) already checked with `normalise_rows`/`check_rows`; the caller turns it
into model input with `to_model_input`.

Hand-written: MLflow's own parsing builds a pandas DataFrame per request and then enforces
the schema, which is slow on the hot path and names no row.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from inference.protocols import check_row_count, describe_error
from inference.protocols.outputs import json_values
from inference.validation import NUMERIC, InputSpec, check_rows, normalise_rows
from platform_site.errors import InvalidInput, MalformedBody, ModelhostError, UnsupportedMediaType

CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_CSV = "text/csv"
CONTENT_TYPE_PARQUET = "application/vnd.apache.parquet"
CONTENT_TYPES = [CONTENT_TYPE_CSV, CONTENT_TYPE_JSON, CONTENT_TYPE_PARQUET]

DF_SPLIT = "dataframe_split"
DF_RECORDS = "dataframe_records"
INSTANCES = "instances"
INPUTS = "inputs"
FORMAT_KEYS = (DF_SPLIT, DF_RECORDS, INSTANCES, INPUTS)
REQUIRED_INPUT_FORMAT = (
    "The input must be a JSON dictionary with exactly one of the input fields "
    "{'dataframe_split', 'dataframe_records', 'instances', 'inputs'}"
)
PROTOCOL_CHANGE_HINT = (
    "The MLflow scoring protocol changed in MLflow 2.0; see https://mlflow.org/docs/latest/models.html#deploy-mlflow-models."
)

# pandas.read_csv's default missing-value markers; MLflow parses CSV with pandas.
_CSV_MISSING = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "None",
        "n/a",
        "null",
    }
)
_CSV_TRUE = frozenset({"True", "TRUE", "true"})
_CSV_FALSE = frozenset({"False", "FALSE", "false"})

# MLflow's error codes (mlflow.protos.databricks_pb2) by our status. MLflow answers a schema
# mismatch with INVALID_PARAMETER_VALUE and an unparseable request with BAD_REQUEST; it has
# no code for 413 or 415 (it answers 415 in plain text), so those say BAD_REQUEST.
_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    409: "RESOURCE_CONFLICT",
    413: "BAD_REQUEST",
    415: "BAD_REQUEST",
    422: "INVALID_PARAMETER_VALUE",
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
}


@dataclass
class ParsedInvocation:
    """Rows as lists in signature order, validated; `params` is the request's `params` ({} if none)."""

    rows: list[list[Any]]
    n_rows: int
    params: dict[str, Any] = field(default_factory=dict)


def parse_invocations(body: bytes, *, content_type: str | None, spec: InputSpec) -> ParsedInvocation:
    """Decode and validate an /invocations body; raises InvalidInput, MalformedBody, UnsupportedMediaType or PayloadTooLarge."""
    mime = _media_type(content_type)
    if mime == CONTENT_TYPE_JSON:
        rows, params = _parse_json(body, spec)
    elif mime == CONTENT_TYPE_CSV:
        rows, params = _parse_csv(body, spec), {}
    else:
        rows, params = _parse_parquet(body, spec), {}
    check_rows(rows, spec)
    return ParsedInvocation(rows=rows, n_rows=len(rows), params=params)


def _media_type(content_type: str | None) -> str:
    if not content_type:
        raise UnsupportedMediaType(f"Send a Content-Type: one of {CONTENT_TYPES}.")
    parts = [part.strip() for part in content_type.split(";")]
    mime = parts[0].lower()
    parameters = {key.strip().lower(): value.strip() for key, _, value in (p.partition("=") for p in parts[1:] if p)}
    if parameters.get("charset", "utf-8").strip('"').lower() != "utf-8":
        raise UnsupportedMediaType("The scoring server only supports UTF-8.")
    unexpected = sorted(set(parameters) - {"charset"})
    if unexpected:
        raise UnsupportedMediaType(
            f"Unrecognized content type parameters: {', '.join(unexpected)}. Since MLflow 2.0 the format is a key of the "
            "JSON body (dataframe_split, dataframe_records, instances, inputs), not a content type parameter. "
            f"{PROTOCOL_CHANGE_HINT}"
        )
    if mime not in CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"This predictor only supports the following content types: {CONTENT_TYPES}. Got '{content_type}'."
        )
    return mime


# ---------------------------------------------------------------------------- JSON


def _parse_json(body: bytes, spec: InputSpec) -> tuple[list[list[Any]], dict[str, Any]]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"Invalid input. Ensure that input is a valid JSON formatted string. Error: {exc}") from None
    if not isinstance(payload, dict):
        kind = "a list" if isinstance(payload, list) else f"a {type(payload).__name__}"
        raise MalformedBody(f"{REQUIRED_INPUT_FORMAT}. Received {kind}.")
    present = [key for key in FORMAT_KEYS if key in payload]
    if len(present) != 1:
        raise MalformedBody(
            f"{REQUIRED_INPUT_FORMAT}. Received dictionary with input fields: {list(payload)}. {PROTOCOL_CHANGE_HINT}"
        )
    params = payload.get("params")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise InvalidInput(
            "`params` must be an object of parameter names to values.",
            errors=[{"field": "params", "message": "expected an object"}],
        )
    key = present[0]
    data = payload[key]
    if key == DF_SPLIT:
        rows = _rows_from_split(data, spec)
    elif key == DF_RECORDS:
        if not isinstance(data, list):
            kind = "dictionary" if isinstance(data, dict) else f"type {type(data).__name__}"
            raise MalformedBody(f"Invalid input. Dataframe records format must be a list of records. Got {kind}.")
        rows = _rows_from_list(data, spec)
    else:
        rows = _rows_from_tensor_input(key, data, spec)
    return rows, params


def _rows_from_list(values: list, spec: InputSpec) -> list[list[Any]]:
    """Records, rows, or (for a one-column model) a flat list of values, one per row."""
    if len(spec.columns) == 1 and values and not any(isinstance(v, (list, dict)) for v in values):
        values = [[v] for v in values]
    return normalise_rows(values, spec)


def _rows_from_tensor_input(key: str, data: Any, spec: InputSpec) -> list[list[Any]]:
    """`instances` / `inputs`: rows, records, one record, or a dict of column -> list of values."""
    if isinstance(data, list):
        return _rows_from_list(data, spec)
    if isinstance(data, dict):
        lists = [name for name, value in data.items() if isinstance(value, list)]
        if not lists:
            return normalise_rows(data, spec)  # one record
        if len(lists) != len(data):
            scalar = next(name for name, value in data.items() if not isinstance(value, list))
            raise InvalidInput(
                f"`{key}` mixes columns (lists) and single values: '{scalar}' is not a list.",
                errors=[{"column": scalar, "message": "expected a list of values like the other columns"}],
            )
        lengths = {len(value) for value in data.values()}
        if len(lengths) != 1:
            raise InvalidInput(
                "The length of values for each input/column name are not the same: "
                + ", ".join(f"{name} has {len(value)}" for name, value in data.items())
                + ".",
                errors=[{"field": key, "message": "columns of different lengths"}],
            )
        columns = list(data)
        check_row_count(lengths.pop(), spec)
        rows = [list(row) for row in zip(*data.values(), strict=True)]
        return normalise_rows(_reorder(columns, rows, spec), spec)
    return normalise_rows(data, spec)  # raises the usual "inputs must be a list" error


def _rows_from_split(data: Any, spec: InputSpec) -> list[list[Any]]:
    if not isinstance(data, dict):
        kind = "list" if isinstance(data, list) else f"type {type(data).__name__}"
        raise MalformedBody(f"Invalid input. Dataframe split format must be a dictionary. Got {kind}.")
    keys = set(data)
    if "data" not in keys or keys - {"columns", "data", "index"}:
        raise MalformedBody(
            "Invalid input. Dataframe split format must have 'data' field and optionally 'columns' and 'index' fields. "
            f"Got {sorted(keys)}."
        )
    rows = data["data"]
    if not isinstance(rows, list):
        raise MalformedBody("Invalid input. dataframe_split.data must be a list of rows.")
    index = data.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(rows)):
        raise MalformedBody(f"Invalid input. dataframe_split.index must be a list of {len(rows)} labels, one per row.")
    if rows and not any(isinstance(row, (list, dict)) for row in rows):
        rows = [[value] for value in rows]  # pandas reads a flat list as one column
    columns = data.get("columns")
    if columns is None:
        return normalise_rows(rows, spec)
    if not isinstance(columns, list):
        raise MalformedBody("Invalid input. dataframe_split.columns must be a list of column names.")
    check_row_count(len(rows), spec)
    return normalise_rows(_reorder(columns, rows, spec), spec)


def _reorder(columns: list, rows: list, spec: InputSpec) -> list[list[Any]]:
    """Rows given in `columns` order, put in signature order; unknown or missing names are 400s."""
    names = spec.names
    width = len(columns)
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            got = f"{len(row)} values" if isinstance(row, list) else f"a {type(row).__name__}"
            raise InvalidInput(
                f"Row {index} has {got}; the columns are {width} ({', '.join(map(str, columns))}).",
                errors=[{"row": index, "column": "*", "message": f"expected {width} values, got {got}"}],
            )
    if columns == names or not spec.named:
        # An unnamed signature (a model fitted on an ndarray) takes columns by position, as MLflow's tensor schemas do.
        if width != len(names):
            raise InvalidInput(
                f"The input has {width} columns; the model expects {len(names)}.",
                errors=[{"column": "*", "message": f"expected {len(names)} columns, got {width}"}],
            )
        return rows
    position: dict[str, int] = {}
    known = set(names)
    for index, name in enumerate(columns):
        if not isinstance(name, str):
            name = str(name)
        if name in position:
            raise InvalidInput(f"Column '{name}' appears twice.", errors=[{"column": name, "message": "duplicate column"}])
        if name not in known:
            raise InvalidInput(
                f"Unknown column '{name}'; the model expects {', '.join(names)}.",
                errors=[{"column": name, "message": f"unknown column; expected {', '.join(names)}"}],
            )
        position[name] = index
    for column in spec.columns:
        if column.name not in position and not column.allow_missing:
            raise InvalidInput(
                f"Missing column '{column.name}'; the model expects {', '.join(names)}.",
                errors=[{"column": column.name, "message": "missing column"}],
            )
    order = [position.get(name) for name in names]
    return [[None if i is None else row[i] for i in order] for row in rows]


# ---------------------------------------------------------------------------- CSV and Parquet


def _csv_cell(text: str, kind: str) -> Any:
    """A CSV cell as pandas would read it for a column of that type; unparseable text stays a string for check_rows to name."""
    if kind in NUMERIC:
        if text in _CSV_MISSING:
            return None
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            return text
    if text == "":
        return None
    if kind == "boolean":
        if text in _CSV_TRUE:
            return True
        if text in _CSV_FALSE:
            return False
    return text


def _parse_csv(body: bytes, spec: InputSpec) -> list[list[Any]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"Invalid input. Ensure that input is a valid UTF-8 encoded string. Error: {exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        while header == []:
            header = next(reader, None)
        if header is None:
            raise MalformedBody("The CSV body is empty: send a header row naming the columns, then one line per row.")
        width = len(header)
        lines = []
        for record in reader:
            if not record:
                continue  # pandas skips blank lines
            if len(record) > width:
                row = len(lines)
                raise MalformedBody(
                    f"Failed to parse input as CSV: line {reader.line_num} (row {row}) has {len(record)} fields; the "
                    f"header has {width}.",
                    errors=[{"row": row, "column": "*", "message": f"expected {width} fields, got {len(record)}"}],
                )
            lines.append(record)
    except csv.Error as exc:
        raise MalformedBody(f"Failed to parse input as CSV at line {reader.line_num}: {exc}.") from None
    check_row_count(len(lines), spec)
    header = [name.strip() for name in header]
    # pandas pads short lines with missing values; so do we, and check_rows names the empty cell.
    padded = [record + [""] * (width - len(record)) if len(record) < width else record for record in lines]
    ordered = _reorder(header, padded, spec)
    kinds = [column.type for column in spec.columns]
    rows = [[None if cell is None else _csv_cell(cell, kind) for cell, kind in zip(row, kinds, strict=True)] for row in ordered]
    return normalise_rows(rows, spec)


def _parse_parquet(body: bytes, spec: InputSpec) -> list[list[Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UnsupportedMediaType(
            f"Parquet input is not available on this server; send {CONTENT_TYPE_JSON} or {CONTENT_TYPE_CSV}."
        ) from None
    try:
        table = pq.read_table(io.BytesIO(body))
    except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise MalformedBody(f"Failed to parse input as a Parquet table: {exc}") from None
    check_row_count(table.num_rows, spec)
    columns = [str(name) for name in table.column_names]
    values = [_parquet_column(table.column(i).to_pylist()) for i in range(table.num_columns)]
    rows = [list(row) for row in zip(*values, strict=True)]
    return normalise_rows(_reorder(columns, rows, spec), spec)


def _parquet_column(values: list) -> list:
    # Arrow's nulls come back as None already; only unwrap the odd numpy scalar.
    return [v.item() if isinstance(v, np.generic) else v for v in values]


# ---------------------------------------------------------------------------- responses


def render_predictions(predictions: np.ndarray | list, probabilities: np.ndarray | list | None = None) -> bytes:
    """`{"predictions": [...]}` as MLflow renders a sklearn model's output (scalars, or strings for string labels).

    With `probabilities`, a `probabilities` key follows, as MLflow's extra response metadata would.
    """
    body: dict[str, Any] = {"predictions": json_values(predictions)}
    if probabilities is not None:
        body["probabilities"] = json_values(probabilities)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def error_code(exc: BaseException) -> str:
    """MLflow's `error_code` for one of our errors."""
    if isinstance(exc, InvalidInput):
        return "INVALID_PARAMETER_VALUE"  # MLflow's code for schema enforcement failures
    if isinstance(exc, ModelhostError):
        if exc.code == "quota_exceeded":
            return "RESOURCE_EXHAUSTED"
        return _ERROR_CODES.get(exc.status, "INTERNAL_ERROR")
    return "INTERNAL_ERROR"


def error_body(exc: BaseException) -> bytes:
    """The protocol's error shape: `{"error_code": "...", "message": "..."}`."""
    return orjson.dumps({"error_code": error_code(exc), "message": describe_error(exc)})
