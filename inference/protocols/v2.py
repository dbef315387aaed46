"""Open Inference Protocol (KServe V2) REST codec, with Triton's binary tensor data extension.

A request carries either ONE tensor of shape [N, F] (or [F] for one row) whose columns are
the signature's features in order, or one tensor per feature, each named by its signature
column, of shape [N] or [N, 1]. Tensor data is JSON (flat or nested, row-major) or, when
the `Inference-Header-Content-Length` header is present, raw little-endian bytes after the
JSON header, one `binary_data_size` slice per input in input order; BYTES elements are
4-byte little-endian lengths followed by UTF-8. Responses are JSON, or JSON header plus raw
bytes when any requested output asks for `binary_data` (or the request sets Triton's
`binary_data_output`).

Hand-written rather than borrowed: MLServer's and KServe's codecs are bound to their own
pydantic request types and server stacks, and neither speaks the binary extension on the
request side the way tritonclient sends it; this module needs only numpy and orjson and
stays on the hot path.
"""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from inference.protocols import check_row_count, describe_error
from inference.validation import INTEGER, NUMERIC, InputSpec, check_rows, validate_array
from platform_site.errors import InvalidInput, MalformedBody, UnsupportedMediaType

HEADER_LENGTH = "Inference-Header-Content-Length"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
# Per-row feature contributions (inference.explanations): [rows, features] in the model's input
# order, and the base value they add to, [rows]. Asking for either explains the rows.
EXPLANATION = "explanation"
EXPLANATION_BASE = "explanation_base"
EXPLANATION_OUTPUTS = (EXPLANATION, EXPLANATION_BASE)
WHOLE_INPUT_NAME = "input-0"

# Little-endian wire dtypes of the binary extension. BOOL is one byte, 0 or 1.
_WIRE_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("u1"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = (*_WIRE_DTYPES, "BYTES")
_INTEGER_DATATYPES = {name for name, dtype in _WIRE_DTYPES.items() if dtype.kind in "iu" and name != "BOOL"}
_FLOAT_DATATYPES = {"FP16", "FP32", "FP64"}

# Content types a V2 client may send. Triton and KServe ignore the header; `curl -d` sends
# x-www-form-urlencoded, so refusing it would break the commonest hand-written request.
_ACCEPTED_MEDIA = {"application/json", "application/octet-stream", "application/x-www-form-urlencoded", "text/plain"}

_COLUMN_DATATYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL", "string": "BYTES"}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass
class InferRequest:
    """A parsed, validated infer request.

    `inputs` is a float64 ndarray [n_rows, n_features] when `spec.wants_frame` is False,
    otherwise a list of rows (lists in signature order) for `to_model_input`.
    """

    id: str | None
    inputs: Any
    n_rows: int
    outputs: list[RequestedOutput] = field(default_factory=lambda: [RequestedOutput(PREDICT)])
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Tensor:
    index: int
    name: str
    shape: list[int]
    datatype: str
    count: int
    data: Any  # the JSON `data`, or None when the tensor travels as binary
    binary_size: int | None


# ---------------------------------------------------------------------------- request


def parse_infer_request(
    body: bytes, *, content_type: str | None, inference_header_length: str | None, spec: InputSpec
) -> InferRequest:
    """Decode and validate an infer request; raises InvalidInput, MalformedBody, UnsupportedMediaType or PayloadTooLarge."""
    _check_media_type(content_type)
    header_bytes, binary = _split_body(body, inference_header_length)
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        hint = ""
        if inference_header_length is None and b"binary_data_size" in header_bytes:
            hint = f" Binary tensor data needs the {HEADER_LENGTH} header."
        raise MalformedBody(f"The request body is not valid JSON: {exc}.{hint}") from None
    if not isinstance(header, dict):
        raise MalformedBody("The request must be a JSON object with an `inputs` list.")

    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("`id` must be a string.", errors=[{"field": "id", "message": "expected a string"}])
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("`parameters` must be an object.", errors=[{"field": "parameters", "message": "expected an object"}])
    outputs = _parse_outputs(header.get("outputs"), binary_default=parameters.get("binary_data_output", False))
    tensors = _parse_tensors(header.get("inputs"), binary_present=inference_header_length is not None)
    _attach_binary(tensors, binary)

    names = spec.names
    if len(tensors) == 1 and (tensors[0].name not in names or len(names) == 1):
        inputs, n_rows = _whole_input(tensors[0], spec)
    else:
        inputs, n_rows = _per_column_inputs(tensors, spec)
    return InferRequest(id=request_id, inputs=inputs, n_rows=n_rows, outputs=outputs, parameters=parameters)


def _check_media_type(content_type: str | None) -> None:
    if not content_type:
        return
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in _ACCEPTED_MEDIA or mime.endswith("+json"):
        return
    raise UnsupportedMediaType(
        "Open Inference Protocol requests are JSON (application/json), optionally followed by binary tensor data; got "
        f"'{content_type}'."
    )


def _split_body(body: bytes, inference_header_length: str | None) -> tuple[bytes, memoryview]:
    if inference_header_length is None:
        return body, memoryview(b"")
    try:
        length = int(inference_header_length.strip())
    except ValueError:
        raise MalformedBody(f"{HEADER_LENGTH} must be a number of bytes, got {inference_header_length!r}.") from None
    if length < 0:
        raise MalformedBody(f"{HEADER_LENGTH} must not be negative, got {length}.")
    if length > len(body):
        raise MalformedBody(f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes.")
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def _parse_outputs(raw: Any, *, binary_default: Any) -> list[RequestedOutput]:
    if not isinstance(binary_default, bool):
        raise InvalidInput(
            "parameters.binary_data_output must be true or false.",
            errors=[{"field": "parameters.binary_data_output", "message": "expected a boolean"}],
        )
    if not raw:
        return [RequestedOutput(PREDICT, binary=binary_default)]
    if not isinstance(raw, list):
        raise InvalidInput(
            "`outputs` must be a list of {name, parameters?}.", errors=[{"field": "outputs", "message": "expected a list"}]
        )
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for position, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise InvalidInput(
                f"outputs[{position}] needs a `name`.", errors=[{"field": f"outputs[{position}]", "message": "expected {name}"}]
            )
        if name in seen:
            raise InvalidInput(
                f"Output '{name}' is requested twice.", errors=[{"field": f"outputs.{name}", "message": "requested twice"}]
            )
        seen.add(name)
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(
                f"Output '{name}': parameters must be an object.",
                errors=[{"field": f"outputs.{name}", "message": "expected an object"}],
            )
        for unsupported in ("classification", "shared_memory_region"):
            if unsupported in params:
                raise InvalidInput(
                    f"Output '{name}': the '{unsupported}' extension is not supported here.",
                    errors=[{"field": f"outputs.{name}", "message": f"{unsupported} is not supported"}],
                )
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise InvalidInput(
                f"Output '{name}': binary_data must be true or false.",
                errors=[{"field": f"outputs.{name}", "message": "expected a boolean"}],
            )
        outputs.append(RequestedOutput(name, binary=binary))
    return outputs


def _parse_tensors(raw: Any, *, binary_present: bool) -> list[_Tensor]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(
            "`inputs` must be a non-empty list of tensors {name, shape, datatype, data}.",
            errors=[{"field": "inputs", "message": "expected a list of tensors"}],
        )
    tensors = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(
                f"inputs[{index}] must be a tensor with a string `name`.",
                errors=[{"field": f"inputs[{index}]", "message": "expected {name, shape, datatype, data}"}],
            )
        name = item["name"]
        field_name = f"inputs.{name}"
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise InvalidInput(
                f"Input '{name}': shape must be a list of non-negative integers, got {shape!r}.",
                errors=[{"field": field_name, "message": "bad shape"}],
            )
        datatype = item.get("datatype")
        if datatype not in DATATYPES:
            raise InvalidInput(
                f"Input '{name}': datatype {datatype!r} is not supported; use one of {', '.join(DATATYPES)}.",
                errors=[{"field": field_name, "message": f"unsupported datatype {datatype!r}"}],
            )
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(
                f"Input '{name}': parameters must be an object.", errors=[{"field": field_name, "message": "expected an object"}]
            )
        if "shared_memory_region" in params:
            raise InvalidInput(
                f"Input '{name}': shared memory is not supported here.",
                errors=[{"field": field_name, "message": "shared memory is not supported"}],
            )
        binary_size = params.get("binary_data_size")
        data = item.get("data")
        if binary_size is not None:
            if type(binary_size) is not int or binary_size < 0:
                raise MalformedBody(f"Input '{name}': binary_data_size must be a non-negative integer, got {binary_size!r}.")
            if not binary_present:
                raise MalformedBody(f"Input '{name}' declares binary_data_size but the request has no {HEADER_LENGTH} header.")
            if data is not None:
                raise MalformedBody(f"Input '{name}' has both `data` and binary_data_size; send one.")
        elif data is None:
            raise InvalidInput(f"Input '{name}' has no `data`.", errors=[{"field": field_name, "message": "no data"}])
        tensors.append(_Tensor(index, name, shape, datatype, math.prod(shape), data, binary_size))
    return tensors


def _attach_binary(tensors: list[_Tensor], binary: memoryview) -> None:
    """Give each binary input its slice of the bytes after the header, in input order."""
    offset = 0
    for tensor in tensors:
        if tensor.binary_size is None:
            continue
        end = offset + tensor.binary_size
        if end > len(binary):
            raise MalformedBody(
                f"Input '{tensor.name}' declares {tensor.binary_size} bytes of binary data but only "
                f"{len(binary) - offset} remain in the body."
            )
        tensor.data = binary[offset:end]
        offset = end
    if offset != len(binary):
        raise MalformedBody(f"{len(binary) - offset} bytes follow the binary tensor data that no input declares.")


# ---------------------------------------------------------------------------- decoding


_Locate = Callable[[int], tuple[int, str]]


def _decode(tensor: _Tensor, locate: _Locate) -> np.ndarray | list:
    """The tensor's elements, flat: an ndarray for numbers and BOOL, a list of str (or None) for BYTES."""
    if tensor.binary_size is not None:
        return _decode_binary(tensor)
    return _decode_json(tensor, locate)


def _count_error(tensor: _Tensor, got: int, unit: str = "values") -> InvalidInput:
    return InvalidInput(
        f"Input '{tensor.name}' has shape {tensor.shape} ({tensor.count} elements) but its data holds {got} {unit}.",
        errors=[{"field": f"inputs.{tensor.name}", "message": f"shape {tensor.shape} needs {tensor.count} elements, got {got}"}],
    )


def _decode_binary(tensor: _Tensor) -> np.ndarray | list:
    raw: memoryview = tensor.data
    if tensor.datatype == "BYTES":
        return _decode_bytes_elements(tensor, raw)
    wire = _WIRE_DTYPES[tensor.datatype]
    if len(raw) != tensor.count * wire.itemsize:
        got = len(raw) / wire.itemsize
        raise InvalidInput(
            f"Input '{tensor.name}' has shape {tensor.shape} ({tensor.count} {tensor.datatype} elements, "
            f"{tensor.count * wire.itemsize} bytes) but binary_data_size is {len(raw)}.",
            errors=[
                {"field": f"inputs.{tensor.name}", "message": f"shape {tensor.shape} needs {tensor.count} elements, got {got:g}"}
            ],
        )
    values = np.frombuffer(raw, dtype=wire)
    if tensor.datatype == "BOOL":
        if (values > 1).any():
            raise MalformedBody(f"Input '{tensor.name}': BOOL elements must be bytes 0 or 1.")
        return values.astype(bool)
    return values.astype(wire.newbyteorder("="))  # a native, writable copy


def _decode_bytes_elements(tensor: _Tensor, raw: memoryview) -> list:
    values: list[str] = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise MalformedBody(f"Input '{tensor.name}': a BYTES element's 4-byte length is cut off.")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > end:
            raise MalformedBody(f"Input '{tensor.name}': a BYTES element claims {length} bytes but only {end - offset} remain.")
        try:
            values.append(str(raw[offset : offset + length], "utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(
                f"Input '{tensor.name}': element {len(values)} is not UTF-8 text.",
                errors=[{"field": f"inputs.{tensor.name}", "message": f"element {len(values)} is not UTF-8"}],
            ) from None
        offset += length
    if len(values) != tensor.count:
        raise _count_error(tensor, len(values), "BYTES elements")
    return values


def _flatten(data: list) -> list:
    if not any(type(item) is list for item in data):
        return data
    flat: list = []
    for item in data:
        if type(item) is list:
            flat.extend(_flatten(item))
        else:
            flat.append(item)
    return flat


def _describe_value(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return f"a nested {type(value).__name__}"
    return repr(value)


def _element_error(tensor: _Tensor, flat: list, position: int, expected: str, locate: _Locate) -> InvalidInput:
    row, column = locate(position)
    message = f"expected {expected} ({tensor.datatype} tensor '{tensor.name}'), got {_describe_value(flat[position])}"
    return InvalidInput(f"Row {row}, column '{column}': {message}.", errors=[{"row": row, "column": column, "message": message}])


def _decode_json(tensor: _Tensor, locate: _Locate) -> np.ndarray | list:
    if not isinstance(tensor.data, list):
        raise InvalidInput(
            f"Input '{tensor.name}': data must be a list.",
            errors=[{"field": f"inputs.{tensor.name}", "message": "expected a list"}],
        )
    flat = _flatten(tensor.data)
    if len(flat) != tensor.count:
        raise _count_error(tensor, len(flat))
    kinds = set(map(type, flat))
    datatype = tensor.datatype
    if datatype == "BYTES":
        if not kinds <= {str, type(None)}:
            bad = next(i for i, v in enumerate(flat) if not (v is None or type(v) is str))
            raise _element_error(tensor, flat, bad, "a string", locate)
        return flat
    if datatype == "BOOL":
        if not kinds <= {bool}:
            bad = next(i for i, v in enumerate(flat) if type(v) is not bool)
            raise _element_error(tensor, flat, bad, "true or false", locate)
        return np.array(flat, dtype=bool)
    if not kinds <= {int, float, type(None)}:
        bad = next(i for i, v in enumerate(flat) if type(v) not in (int, float, type(None)))
        raise _element_error(tensor, flat, bad, "a number", locate)
    if datatype in _INTEGER_DATATYPES and float in kinds:
        # The platform's one numeric coercion: 5.0 is accepted as the integer 5.
        bad = next((i for i, v in enumerate(flat) if type(v) is float and not v.is_integer()), None)
        if bad is not None:
            raise _element_error(tensor, flat, bad, "an integer", locate)
    if type(None) in kinds:
        # JSON has no NaN: null is the missing value, allowed only where the signature says so.
        return np.array([math.nan if v is None else v for v in flat], dtype=np.float64)
    if datatype in _FLOAT_DATATYPES or float in kinds:
        return np.array(flat, dtype=np.float64)
    try:
        return np.array(flat, dtype=np.int64)
    except OverflowError:
        return np.array(flat, dtype=np.float64)


# ---------------------------------------------------------------------------- assembly


def _whole_input(tensor: _Tensor, spec: InputSpec) -> tuple[Any, int]:
    """One [N, F] (or [F]) tensor whose columns are the signature's, in order."""
    width = len(spec.columns)
    shape = tensor.shape
    if (len(shape) == 2 and shape[1] == width) or (len(shape) == 1 and width == 1):
        n_rows = shape[0]
    elif len(shape) == 1 and shape[0] == width:
        n_rows = 1
    else:
        raise InvalidInput(
            f"Input '{tensor.name}' has shape {shape}; the model expects [rows, {width}] ({', '.join(spec.names)}), "
            f"or one tensor per feature named after it.",
            errors=[{"field": f"inputs.{tensor.name}", "message": f"expected shape [N, {width}], got {shape}"}],
        )
    check_row_count(n_rows, spec)
    names = spec.names

    def locate(position: int) -> tuple[int, str]:
        return position // width, names[position % width]

    values = _decode(tensor, locate)
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf" and spec.all_numeric:
        matrix = validate_array(values.reshape(n_rows, width).astype(np.float64, copy=False), spec)
        return (matrix.tolist() if spec.wants_frame else matrix), n_rows
    flat = values.tolist() if isinstance(values, np.ndarray) else values
    rows = [flat[start : start + width] for start in range(0, n_rows * width, width)]
    check_rows(rows, spec)
    return (rows if spec.wants_frame else np.array(rows, dtype=np.float64)), n_rows


def _per_column_inputs(tensors: list[_Tensor], spec: InputSpec) -> tuple[Any, int]:
    """One [N] or [N, 1] tensor per feature, each named by its signature column."""
    names = spec.names
    known = set(names)
    by_name: dict[str, _Tensor] = {}
    for tensor in tensors:
        if tensor.name not in known:
            raise InvalidInput(
                f"Unknown input '{tensor.name}': send one [N, {len(names)}] tensor, or one tensor per feature named "
                f"{', '.join(names)}.",
                errors=[{"column": tensor.name, "message": f"unknown input; expected one of {', '.join(names)}"}],
            )
        if tensor.name in by_name:
            raise InvalidInput(f"Input '{tensor.name}' is sent twice.", errors=[{"column": tensor.name, "message": "sent twice"}])
        by_name[tensor.name] = tensor
    for column in spec.columns:
        if column.name not in by_name and not column.allow_missing:
            raise InvalidInput(
                f"Missing feature '{column.name}': with one tensor per feature, send all of {', '.join(names)}.",
                errors=[{"column": column.name, "message": "missing feature"}],
            )
    n_rows = None
    for tensor in by_name.values():
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidInput(
                f"Input '{tensor.name}' has shape {shape}; a per-feature tensor has shape [N] or [N, 1].",
                errors=[{"column": tensor.name, "message": f"expected shape [N] or [N, 1], got {shape}"}],
            )
        if n_rows is None:
            n_rows, first = shape[0], tensor.name
        elif shape[0] != n_rows:
            raise InvalidInput(
                f"Input '{tensor.name}' has {shape[0]} rows but '{first}' has {n_rows}.",
                errors=[{"column": tensor.name, "message": f"expected {n_rows} rows, got {shape[0]}"}],
            )
    check_row_count(n_rows, spec)

    columns: list[Any] = []
    for column in spec.columns:
        tensor = by_name.get(column.name)
        if tensor is None:
            columns.append(None)
            continue
        columns.append(_decode(tensor, lambda position, name=column.name: (position, name)))
    numeric = all(c is None or (isinstance(c, np.ndarray) and c.dtype.kind in "iuf") for c in columns)
    if numeric and not spec.wants_frame:
        matrix = np.empty((n_rows, len(names)), dtype=np.float64)
        for index, values in enumerate(columns):
            matrix[:, index] = math.nan if values is None else values
        return validate_array(matrix, spec), n_rows
    lists = [[None] * n_rows if c is None else (c.tolist() if isinstance(c, np.ndarray) else c) for c in columns]
    rows = [list(row) for row in zip(*lists, strict=True)]
    check_rows(rows, spec)
    return (rows if spec.wants_frame else np.array(rows, dtype=np.float64)), n_rows


# ---------------------------------------------------------------------------- response


def check_requested_outputs(outputs: list[RequestedOutput], *, has_proba: bool, can_explain: bool = False) -> None:
    """Raise InvalidInput naming the first output this model cannot give; call it before predicting."""
    available = [PREDICT, PREDICT_PROBA] if has_proba else [PREDICT]
    if can_explain:
        available += list(EXPLANATION_OUTPUTS)
    for output in outputs:
        if output.name == PREDICT_PROBA and not has_proba:
            raise InvalidInput(
                "Output 'predict_proba' is not available: this model gives no probabilities (a regressor, or a "
                "classifier without predict_proba).",
                errors=[{"field": "outputs.predict_proba", "message": "not available for this model"}],
            )
        if output.name not in available:
            raise InvalidInput(
                f"Unknown output '{output.name}'; this model has: {', '.join(available)}.",
                errors=[
                    {"field": f"outputs.{output.name}", "message": f"unknown output; expected one of {', '.join(available)}"}
                ],
            )


def tensor_datatype(values: np.ndarray) -> str:
    """The V2 datatype a prediction array is sent as: INT64, FP64, BOOL or BYTES."""
    kind = values.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    if kind in "US":
        return "BYTES"
    items = values.ravel().tolist()  # an object array: Python or numpy scalars, or strings
    if all(isinstance(v, (str, bytes)) for v in items):
        return "BYTES"
    if all(isinstance(v, (bool, np.bool_)) for v in items):
        return "BOOL"
    if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
        return "INT64"
    if all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in items):
        return "FP64"
    return "BYTES"


def classes_datatype(classes: list) -> str:
    """The `predict` datatype of a classifier from its JSON classes (one list per output for multi-output models)."""
    flat = [label for part in classes for label in part] if all(isinstance(part, list) for part in classes) else classes
    return tensor_datatype(np.array(flat, dtype=object))


def _output_array(values: Any, name: str) -> np.ndarray:
    """One tensor from a model output; multi-output probabilities (one array per output) stack when their widths agree."""
    if isinstance(values, np.ndarray):
        return values
    if isinstance(values, list) and values and all(isinstance(part, (list, np.ndarray)) for part in values):
        shapes = {np.shape(part) for part in values}
        if len(shapes) > 1 and name == PREDICT_PROBA:
            raise InvalidInput(
                "Output 'predict_proba' is not one tensor for this model: its outputs have different numbers of classes "
                f"({', '.join(str(shape[-1]) for shape in sorted(shapes))}); use the native /predict endpoint for them.",
                errors=[{"field": "outputs.predict_proba", "message": "outputs of different widths"}],
            )
    return np.asarray(values)


def _wire_values(values: np.ndarray, datatype: str) -> np.ndarray | list:
    if datatype == "BYTES":
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.ravel().tolist()]
    native = {"BOOL": np.bool_, "INT64": np.int64, "FP64": np.float64}[datatype]
    return np.ascontiguousarray(values, dtype=native).ravel()


def _encode_binary(values: np.ndarray | list, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for text in values:
            encoded = text.encode("utf-8")
            parts.append(struct.pack("<I", len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    wire = "u1" if datatype == "BOOL" else _WIRE_DTYPES[datatype]
    return values.astype(wire, copy=False).tobytes()


def render_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[RequestedOutput],
    predictions: np.ndarray | list,
    probabilities: np.ndarray | list | None,
    parameters: dict | None = None,
    explanation: dict | None = None,
) -> tuple[bytes, str, dict[str, str]]:
    """(body, content type, extra headers): JSON, or JSON header + raw tensors when any output is binary.

    With `explanation` (inference.explanations), the explanation outputs carry its values and
    base values, and the response's parameters say which explainer and what it explains.
    """
    check_requested_outputs(outputs, has_proba=probabilities is not None, can_explain=explanation is not None)
    response: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request_id is not None:
        response["id"] = request_id
    if explanation is not None:
        parameters = {**(parameters or {}), "explainer": explanation["method"], "explained_output": explanation["output"]}
    if parameters:
        response["parameters"] = parameters
    by_name = {PREDICT: predictions, PREDICT_PROBA: probabilities}
    if explanation is not None:
        by_name.update({EXPLANATION: explanation["values"], EXPLANATION_BASE: explanation["base"]})
    rendered = []
    chunks: list[bytes] = []
    for output in outputs:
        values = _output_array(by_name[output.name], output.name)
        datatype = "FP64" if output.name != PREDICT else tensor_datatype(values)
        wire = _wire_values(values, datatype)
        tensor: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": list(values.shape)}
        if output.binary:
            raw = _encode_binary(wire, datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = wire
        rendered.append(tensor)
    response["outputs"] = rendered
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, "application/json", {}
    return header + b"".join(chunks), "application/octet-stream", {HEADER_LENGTH: str(len(header))}


# ---------------------------------------------------------------------------- metadata


def server_metadata(*, name: str, version: str) -> dict:
    """`GET /v2`: the server's name, version and the protocol extensions it speaks."""
    return {"name": name, "version": version, "extensions": ["binary_tensor_data"]}


# What `predict` answers for a task without classes: -1/1 for outliers, cluster ids for clusterers.
TASK_DATATYPES = {"outlier_detection": "INT64", "clustering": "INT64"}


def model_metadata(
    *,
    name: str,
    versions: list[str],
    platform: str,
    spec: InputSpec,
    has_proba: bool,
    n_classes: int | None,
    predict_datatype: str | None = None,
    can_explain: bool = False,
) -> dict:
    """`GET /v2/models/{model}`: one [-1, F] input tensor `input-0`, and the outputs.

    Per-feature tensors (one [N] tensor named after each signature column) are also accepted
    by `parse_infer_request`; when the columns mix types that one tensor cannot carry
    (strings and numbers, say), the metadata lists those per-feature inputs instead.
    `predict_datatype` is `tensor_datatype(model.classes_)` for a classifier; by default
    INT64 for a classifier (`n_classes` given) and FP64 otherwise.
    """
    types = {column.type for column in spec.columns}
    if types <= NUMERIC:
        whole = "INT64" if types <= INTEGER else "FP64"
    elif len(types) == 1:
        whole = _COLUMN_DATATYPES.get(next(iter(types)), "BYTES")
    else:
        whole = None
    if whole is not None:
        inputs = [{"name": WHOLE_INPUT_NAME, "datatype": whole, "shape": [-1, len(spec.columns)]}]
    else:
        inputs = [{"name": c.name, "datatype": _COLUMN_DATATYPES.get(c.type, "BYTES"), "shape": [-1]} for c in spec.columns]
    if predict_datatype is None:
        predict_datatype = "INT64" if n_classes is not None else "FP64"
    outputs = [{"name": PREDICT, "datatype": predict_datatype, "shape": [-1]}]
    if has_proba:
        outputs.append({"name": PREDICT_PROBA, "datatype": "FP64", "shape": [-1, n_classes if n_classes is not None else -1]})
    if can_explain:
        outputs.append({"name": EXPLANATION, "datatype": "FP64", "shape": [-1, len(spec.columns)]})
        outputs.append({"name": EXPLANATION_BASE, "datatype": "FP64", "shape": [-1]})
    return {"name": name, "versions": [str(v) for v in versions], "platform": platform, "inputs": inputs, "outputs": outputs}


# ---------------------------------------------------------------------------- errors


def error_message(exc: BaseException) -> str:
    """One readable message for `{"error": ...}`, naming the row and column of a bad cell."""
    return describe_error(exc)


def error_body(message: str) -> bytes:
    """The protocol's error shape: `{"error": "..."}`."""
    return orjson.dumps({"error": message})
