"""The Open Inference Protocol codec, driven by the real tritonclient's request and response code."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from inference.protocols import v2
from inference.protocols.v2 import RequestedOutput
from inference.validation import Column, InputSpec
from platform_site.errors import InvalidInput, MalformedBody, PayloadTooLarge, UnsupportedMediaType

IRIS = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def numeric_spec(*, wants_frame: bool = False, max_rows: int = 100, types: dict[str, str] | None = None) -> InputSpec:
    types = types or {}
    return InputSpec(
        columns=tuple(Column(name, types.get(name, "double")) for name in IRIS),
        named=True,
        wants_frame=wants_frame,
        max_rows=max_rows,
    )


MIXED = InputSpec(
    columns=(Column("city", "string"), Column("age", "long"), Column("member", "boolean"), Column("score", "double")),
    named=True,
    wants_frame=True,
    max_rows=100,
)


def tensor(name: str, values: np.ndarray, datatype: str, *, binary: bool) -> triton.InferInput:
    infer_input = triton.InferInput(name, list(values.shape), datatype)
    infer_input.set_data_from_numpy(values, binary_data=binary)
    return infer_input


def request(inputs, outputs=None, **kwargs) -> tuple[bytes, str | None]:
    body, header_length = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kwargs)
    return body, None if header_length is None else str(header_length)


def parse(body: bytes, header_length: str | None, spec: InputSpec, content_type: str | None = None) -> v2.InferRequest:
    return v2.parse_infer_request(body, content_type=content_type, inference_header_length=header_length, spec=spec)


def raw_json(inputs: list[dict], **extra) -> tuple[bytes, None]:
    return orjson.dumps({"inputs": inputs, **extra}), None


X = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]])
SMALL_INTS = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
NUMERIC_DATATYPES = ["FP64", "FP32", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]


# ---------------------------------------------------------------------------- requests


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_parses_one_fp64_tensor_in_signature_order(binary):
    body, header_length = request([tensor("input-0", X, "FP64", binary=binary)], request_id="req-1")

    parsed = parse(body, header_length, numeric_spec())

    assert parsed.id == "req-1"
    assert parsed.n_rows == 3
    assert parsed.inputs.dtype == np.float64
    np.testing.assert_array_equal(parsed.inputs, X)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", NUMERIC_DATATYPES)
def test_parses_every_numeric_datatype_to_float64(datatype, binary):
    values = SMALL_INTS.astype(triton.triton_to_np_dtype(datatype))
    body, header_length = request([tensor("input-0", values, datatype, binary=binary)])

    parsed = parse(body, header_length, numeric_spec())

    assert parsed.inputs.dtype == np.float64
    np.testing.assert_array_equal(parsed.inputs, SMALL_INTS.astype(np.float64))


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_parses_a_one_row_tensor_of_shape_f(binary):
    body, header_length = request([tensor("input-0", X[0], "FP64", binary=binary)])

    parsed = parse(body, header_length, numeric_spec())

    assert parsed.n_rows == 1
    np.testing.assert_array_equal(parsed.inputs, X[:1])


def test_parses_nested_json_data():
    body, header_length = raw_json([{"name": "input-0", "shape": [3, 4], "datatype": "FP64", "data": X.tolist()}])

    np.testing.assert_array_equal(parse(body, header_length, numeric_spec()).inputs, X)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_parses_one_tensor_per_feature_in_any_order_and_shape(binary):
    inputs = [
        tensor("petal_width", X[:, 3].astype(np.float32), "FP32", binary=binary),
        tensor("sepal_length", X[:, 0].reshape(-1, 1), "FP64", binary=binary),
        tensor("petal_length", X[:, 2], "FP64", binary=binary),
        tensor("sepal_width", X[:, 1].astype(np.float16), "FP16", binary=binary),
    ]
    body, header_length = request(inputs)

    parsed = parse(body, header_length, numeric_spec())

    expected = X.copy()
    expected[:, 3] = X[:, 3].astype(np.float32)
    expected[:, 1] = X[:, 1].astype(np.float16)
    np.testing.assert_array_equal(parsed.inputs, expected)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_parses_bytes_int_and_bool_tensors_into_rows_for_a_frame_model(binary):
    inputs = [
        tensor("city", np.array(["Lyon", "Zürich"], dtype=object), "BYTES", binary=binary),
        tensor("age", np.array([31, 47], dtype=np.int64), "INT64", binary=binary),
        tensor("member", np.array([True, False]), "BOOL", binary=binary),
        tensor("score", np.array([0.5, 1.25]), "FP64", binary=binary),
    ]
    body, header_length = request(inputs)

    parsed = parse(body, header_length, MIXED)

    assert parsed.inputs == [["Lyon", 31, True, 0.5], ["Zürich", 47, False, 1.25]]
    assert parsed.n_rows == 2


def test_parses_a_whole_tensor_into_rows_for_a_named_numeric_frame_model():
    body, header_length = request([tensor("input-0", X, "FP64", binary=True)])

    parsed = parse(body, header_length, numeric_spec(wants_frame=True))

    assert parsed.inputs == X.tolist()


def test_accepts_a_float_with_no_fraction_for_an_integer_column():
    spec = numeric_spec(types={"sepal_length": "long"})
    body, header_length = request([tensor("input-0", np.array([[5.0, 3.5, 1.4, 0.2]]), "FP64", binary=True)])

    np.testing.assert_array_equal(parse(body, header_length, spec).inputs, [[5.0, 3.5, 1.4, 0.2]])


def test_null_is_a_missing_value_where_the_signature_allows_it():
    spec = InputSpec(
        columns=(Column("a", "double", allow_missing=True), Column("b", "double")), named=True, wants_frame=False, max_rows=10
    )
    body, header_length = raw_json([{"name": "input-0", "shape": [1, 2], "datatype": "FP64", "data": [None, 2.0]}])

    parsed = parse(body, header_length, spec)

    assert np.isnan(parsed.inputs[0, 0]) and parsed.inputs[0, 1] == 2.0


def test_outputs_default_to_predict_in_json():
    body, header_length = raw_json([{"name": "input-0", "shape": [4], "datatype": "FP64", "data": X[0].tolist()}])

    assert parse(body, header_length, numeric_spec()).outputs == [RequestedOutput("predict", binary=False)]


def test_tritonclient_without_outputs_asks_for_binary_predict():
    body, header_length = request([tensor("input-0", X, "FP64", binary=False)])

    assert parse(body, header_length, numeric_spec()).outputs == [RequestedOutput("predict", binary=True)]


def test_requested_outputs_keep_order_and_binary_flags():
    outputs = [
        triton.InferRequestedOutput("predict_proba", binary_data=True),
        triton.InferRequestedOutput("predict", binary_data=False),
    ]
    body, header_length = request(
        [tensor("input-0", X, "FP64", binary=True)], outputs=outputs, parameters={"probabilities": True}
    )

    parsed = parse(body, header_length, numeric_spec())

    assert parsed.outputs == [RequestedOutput("predict_proba", binary=True), RequestedOutput("predict", binary=False)]
    assert parsed.parameters == {"probabilities": True}


def test_request_level_binary_data_output_is_overridden_per_output():
    body, header_length = raw_json(
        [{"name": "input-0", "shape": [4], "datatype": "FP64", "data": X[0].tolist()}],
        outputs=[{"name": "predict"}, {"name": "predict_proba", "parameters": {"binary_data": False}}],
        parameters={"binary_data_output": True},
    )

    assert parse(body, header_length, numeric_spec()).outputs == [
        RequestedOutput("predict", True),
        RequestedOutput("predict_proba", False),
    ]


# ---------------------------------------------------------------------------- bad requests


def _lying_shape(binary: bool) -> tuple[bytes, str | None]:
    infer_input = tensor("input-0", SMALL_INTS.astype(np.float64), "FP64", binary=binary)
    infer_input.set_shape([3, 4])
    return request([infer_input])


def _binary_with(values: np.ndarray) -> tuple[bytes, str | None]:
    return request([tensor("input-0", values, "FP64", binary=True)])


def _with_nan() -> tuple[bytes, str | None]:
    values = X.copy()
    values[1, 2] = np.nan
    return _binary_with(values)


def _with_inf() -> tuple[bytes, str | None]:
    values = X.copy()
    values[2, 0] = -np.inf
    return _binary_with(values)


def _header_too_long() -> tuple[bytes, str | None]:
    body, _ = request([tensor("input-0", X, "FP64", binary=True)])
    return body, str(len(body) + 1)


def _trailing_bytes() -> tuple[bytes, str | None]:
    body, header_length = request([tensor("input-0", X, "FP64", binary=True)])
    return body + b"\x00" * 8, header_length


def _binary_without_header() -> tuple[bytes, str | None]:
    body, _ = request([tensor("input-0", X, "FP64", binary=True)])
    return body, None


def _per_feature(names: list[str], **overrides) -> tuple[bytes, str | None]:
    inputs = []
    for position, name in enumerate(names):
        values, datatype = overrides.get(name, (X[:, position % 4], "FP64"))
        inputs.append(tensor(name, values, datatype, binary=True))
    return request(inputs)


FRACTION_SPEC = numeric_spec(types={"petal_width": "long"})

BAD_REQUESTS = [
    pytest.param(
        lambda: request([tensor("input-0", X[:, :3], "FP64", binary=True)]),
        numeric_spec(),
        InvalidInput,
        {"field": "inputs.input-0"},
        "[3, 3]",
        id="wrong-shape",
    ),
    pytest.param(
        lambda: request([tensor("input-0", np.zeros((2, 2, 4)), "FP64", binary=False)]),
        numeric_spec(),
        InvalidInput,
        {"field": "inputs.input-0"},
        "[2, 2, 4]",
        id="three-dimensional-shape",
    ),
    pytest.param(
        lambda: _lying_shape(False),
        numeric_spec(),
        InvalidInput,
        {"field": "inputs.input-0"},
        "[3, 4] (12 elements) but its data holds 8",
        id="json-element-count-mismatch",
    ),
    pytest.param(
        lambda: _lying_shape(True),
        numeric_spec(),
        InvalidInput,
        {"field": "inputs.input-0"},
        "binary_data_size is 64",
        id="binary-element-count-mismatch",
    ),
    pytest.param(
        lambda: _per_feature(["sepal_length", "sepal_width", "petal_length", "bogus"]),
        numeric_spec(),
        InvalidInput,
        {"column": "bogus"},
        "Unknown input 'bogus'",
        id="unknown-input-name",
    ),
    pytest.param(
        lambda: _per_feature(["sepal_length", "sepal_width", "petal_length"]),
        numeric_spec(),
        InvalidInput,
        {"column": "petal_width"},
        "Missing feature 'petal_width'",
        id="missing-feature",
    ),
    pytest.param(
        lambda: _per_feature(["sepal_length", "sepal_length"]),
        numeric_spec(),
        InvalidInput,
        {"column": "sepal_length"},
        "sent twice",
        id="feature-sent-twice",
    ),
    pytest.param(
        lambda: _per_feature(IRIS, petal_width=(np.array([0.1, 0.2]), "FP64")),
        numeric_spec(),
        InvalidInput,
        {"column": "petal_width"},
        "has 2 rows but 'sepal_length' has 3",
        id="features-with-different-row-counts",
    ),
    pytest.param(
        _with_nan,
        numeric_spec(),
        InvalidInput,
        {"row": 1, "column": "petal_length"},
        "finite number, got nan",
        id="nan-in-binary-fp64",
    ),
    pytest.param(
        _with_inf,
        numeric_spec(),
        InvalidInput,
        {"row": 2, "column": "sepal_length"},
        "finite number, got -inf",
        id="inf-in-binary-fp64",
    ),
    pytest.param(
        lambda: _binary_with(np.array([[5.1, 3.5, 1.4, 2.0], [6.2, 2.9, 4.3, 1.5]])),
        FRACTION_SPEC,
        InvalidInput,
        {"row": 1, "column": "petal_width"},
        "expected an integer, got 1.5",
        id="fraction-for-integer-column",
    ),
    pytest.param(
        lambda: raw_json([{"name": "input-0", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4.5]}]),
        numeric_spec(),
        InvalidInput,
        {"row": 0, "column": "petal_width"},
        "expected an integer",
        id="fraction-in-int64-tensor",
    ),
    pytest.param(
        lambda: raw_json([{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": [1, 2, 3, 4, 5, "six", 7, 8]}]),
        numeric_spec(),
        InvalidInput,
        {"row": 1, "column": "sepal_width"},
        "the string 'six'",
        id="string-in-fp64-json",
    ),
    pytest.param(
        lambda: raw_json([{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1, True, 3, 4]}]),
        numeric_spec(),
        InvalidInput,
        {"row": 0, "column": "sepal_width"},
        "the boolean true",
        id="boolean-in-fp64-json",
    ),
    pytest.param(
        lambda: _per_feature(IRIS, petal_length=(np.array(["a", "b", "c"], dtype=object), "BYTES")),
        numeric_spec(),
        InvalidInput,
        {"row": 0, "column": "petal_length"},
        "the string 'a'",
        id="bytes-tensor-for-numeric-column",
    ),
    pytest.param(
        lambda: raw_json([{"name": "input-0", "shape": [0, 4], "datatype": "FP64", "data": []}]),
        numeric_spec(),
        InvalidInput,
        {"field": "inputs"},
        "empty",
        id="empty-batch",
    ),
    pytest.param(
        lambda: raw_json([{"name": "input-0", "shape": [1, 4], "datatype": "BF16", "data": [1, 2, 3, 4]}]),
        numeric_spec(),
        InvalidInput,
        {"field": "inputs.input-0"},
        "'BF16' is not supported",
        id="unsupported-datatype",
    ),
    pytest.param(
        lambda: raw_json(
            [{"name": "input-0", "shape": [4], "datatype": "FP64", "data": [1, 2, 3, 4]}],
            outputs=[{"name": "predict", "parameters": {"classification": 2}}],
        ),
        numeric_spec(),
        InvalidInput,
        {"field": "outputs.predict"},
        "'classification' extension",
        id="classification-extension",
    ),
    pytest.param(
        lambda: request([tensor("input-0", X, "FP64", binary=True)]),
        numeric_spec(max_rows=2),
        PayloadTooLarge,
        {"field": "inputs"},
        "3 rows is more than the limit of 2",
        id="too-many-rows",
    ),
    pytest.param(
        lambda: (b'{"inputs": [{"name": "input-0", "shape": [4], ', None),
        numeric_spec(),
        MalformedBody,
        None,
        "not valid JSON",
        id="malformed-json",
    ),
    pytest.param(lambda: (b"[1, 2, 3]", None), numeric_spec(), MalformedBody, None, "JSON object", id="json-not-an-object"),
    pytest.param(
        _header_too_long,
        numeric_spec(),
        MalformedBody,
        None,
        "Inference-Header-Content-Length is",
        id="header-length-beyond-body",
    ),
    pytest.param(
        lambda: (b"{}", "twelve"),
        numeric_spec(),
        MalformedBody,
        None,
        "must be a number of bytes",
        id="header-length-not-a-number",
    ),
    pytest.param(
        _binary_without_header,
        numeric_spec(),
        MalformedBody,
        None,
        "Binary tensor data needs the Inference-Header-Content-Length header",
        id="binary-without-header",
    ),
    pytest.param(
        lambda: raw_json([{"name": "input-0", "shape": [4], "datatype": "FP64", "parameters": {"binary_data_size": 32}}]),
        numeric_spec(),
        MalformedBody,
        None,
        "declares binary_data_size but the request has no",
        id="binary-size-without-header",
    ),
    pytest.param(_trailing_bytes, numeric_spec(), MalformedBody, None, "8 bytes follow", id="undeclared-trailing-bytes"),
]


@pytest.mark.parametrize(("build", "spec", "error_class", "named", "says"), BAD_REQUESTS)
def test_rejects_bad_request(build, spec, error_class, named, says):
    body, header_length = build()

    with pytest.raises(error_class) as caught:
        parse(body, header_length, spec)

    assert type(caught.value) is error_class
    assert says in caught.value.detail
    if named is not None:
        assert caught.value.errors[0].items() >= named.items()


def test_rejects_a_body_that_is_not_json_or_binary_tensors():
    body, header_length = request([tensor("input-0", X, "FP64", binary=False)])

    with pytest.raises(UnsupportedMediaType) as caught:
        parse(body, header_length, numeric_spec(), content_type="text/csv")

    assert caught.value.status == 415


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
    ],
)
def test_accepts_the_content_types_v2_clients_send(content_type):
    body, header_length = request([tensor("input-0", X, "FP64", binary=True)])

    assert parse(body, header_length, numeric_spec(), content_type=content_type).n_rows == 3


@pytest.mark.parametrize(
    ("outputs", "has_proba", "field", "says"),
    [
        pytest.param([RequestedOutput("bogus")], True, "outputs.bogus", "Unknown output 'bogus'", id="unknown-output-name"),
        pytest.param(
            [RequestedOutput("predict"), RequestedOutput("predict_proba")],
            False,
            "outputs.predict_proba",
            "'predict_proba' is not available",
            id="predict-proba-for-a-regressor",
        ),
    ],
)
def test_check_requested_outputs_names_the_output(outputs, has_proba, field, says):
    with pytest.raises(InvalidInput) as caught:
        v2.check_requested_outputs(outputs, has_proba=has_proba)

    assert caught.value.errors[0]["field"] == field
    assert says in caught.value.detail


def test_render_refuses_predict_proba_without_probabilities():
    with pytest.raises(InvalidInput) as caught:
        v2.render_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs=[RequestedOutput("predict_proba")],
            predictions=np.array([1.5]),
            probabilities=None,
        )

    assert caught.value.errors[0]["field"] == "outputs.predict_proba"


# ---------------------------------------------------------------------------- responses


def decode(rendered: tuple[bytes, str, dict[str, str]]):
    body, _, headers = rendered
    header_length = headers.get(v2.HEADER_LENGTH)
    return triton.InferenceServerClient.parse_response_body(
        body, header_length=None if header_length is None else int(header_length)
    )


PREDICTIONS = [
    pytest.param(np.array([0, 2, 1]), "INT64", id="integer-labels"),
    pytest.param(np.array(["setosa", "virginica", "versicolor"], dtype=object), "BYTES", id="string-labels"),
    pytest.param(np.array([1.5, -0.25, 3.0]), "FP64", id="regression"),
    pytest.param(np.array([True, False, True]), "BOOL", id="boolean-labels"),
    pytest.param(np.array([np.int64(4), np.int64(0), np.int64(7)], dtype=object), "INT64", id="integer-labels-in-object-array"),
]
PROBABILITIES = np.array([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2]])


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize(("predictions", "datatype"), PREDICTIONS)
def test_render_round_trips_through_tritonclient(predictions, datatype, binary):
    outputs = [RequestedOutput("predict", binary=binary), RequestedOutput("predict_proba", binary=binary)]

    result = decode(
        v2.render_infer_response(
            model_name="iris",
            model_version="3",
            request_id="req-9",
            outputs=outputs,
            predictions=predictions,
            probabilities=PROBABILITIES,
        )
    )

    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("iris", "3", "req-9")
    assert [(o["name"], o["datatype"], o["shape"]) for o in response["outputs"]] == [
        ("predict", datatype, [3]),
        ("predict_proba", "FP64", [3, 3]),
    ]
    got = result.as_numpy("predict")
    if datatype == "BYTES":
        got = [value.decode() if isinstance(value, bytes) else value for value in got.tolist()]
        assert got == predictions.tolist()
    else:
        np.testing.assert_array_equal(got, predictions)
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), PROBABILITIES)


def test_binary_response_has_header_length_and_sizes_and_no_data():
    outputs = [RequestedOutput("predict", binary=True), RequestedOutput("predict_proba", binary=False)]

    body, content_type, headers = v2.render_infer_response(
        model_name="iris",
        model_version="3",
        request_id=None,
        outputs=outputs,
        predictions=np.array([0, 2, 1]),
        probabilities=PROBABILITIES,
    )

    header = orjson.loads(body[: int(headers[v2.HEADER_LENGTH])])
    assert content_type == "application/octet-stream"
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 24}
    assert "data" not in header["outputs"][0]
    assert header["outputs"][1]["data"] == PROBABILITIES.ravel().tolist()
    assert "id" not in header
    assert body[int(headers[v2.HEADER_LENGTH]) :] == np.array([0, 2, 1], dtype="<i8").tobytes()


def test_json_response_has_no_extra_headers():
    body, content_type, headers = v2.render_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=[RequestedOutput("predict")],
        predictions=np.array([1.5]),
        probabilities=None,
        parameters={"cache_hit": True},
    )

    assert (content_type, headers) == ("application/json", {})
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "parameters": {"cache_hit": True},
        "outputs": [{"name": "predict", "datatype": "FP64", "shape": [1], "data": [1.5]}],
    }


# ---------------------------------------------------------------------------- metadata and errors


def test_server_metadata_names_the_binary_extension():
    assert v2.server_metadata(name="modelhost", version="1.0") == {
        "name": "modelhost",
        "version": "1.0",
        "extensions": ["binary_tensor_data"],
    }


def test_model_metadata_for_a_classifier():
    metadata = v2.model_metadata(
        name="iris", versions=["1", "3"], platform="sklearn", spec=numeric_spec(), has_proba=True, n_classes=3
    )

    assert metadata == {
        "name": "iris",
        "versions": ["1", "3"],
        "platform": "sklearn",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
        ],
    }


def test_model_metadata_for_a_regressor_and_for_mixed_columns():
    metadata = v2.model_metadata(name="prices", versions=["2"], platform="sklearn", spec=MIXED, has_proba=False, n_classes=None)

    assert metadata["inputs"] == [
        {"name": "city", "datatype": "BYTES", "shape": [-1]},
        {"name": "age", "datatype": "INT64", "shape": [-1]},
        {"name": "member", "datatype": "BOOL", "shape": [-1]},
        {"name": "score", "datatype": "FP64", "shape": [-1]},
    ]
    assert metadata["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]


def test_error_body_and_message_name_the_row_and_column():
    body, header_length = _with_nan()
    with pytest.raises(InvalidInput) as caught:
        parse(body, header_length, numeric_spec())

    message = v2.error_message(caught.value)

    assert message == "Row 1, column 'petal_length': expected a finite number, got nan."
    assert orjson.loads(v2.error_body(message)) == {"error": message}


def test_error_message_spells_out_the_errors_behind_a_generic_detail():
    error = InvalidInput(
        errors=[{"row": 4, "column": "age", "message": "expected a number"}, {"field": "inputs", "message": "empty batch"}]
    )

    assert v2.error_message(error) == "The input is not valid: row 4, column 'age': expected a number; inputs: empty batch."
    assert v2.error_message(RuntimeError("secret path /srv/x")) == "Internal error while serving the prediction."
