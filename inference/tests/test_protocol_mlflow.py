"""The MLflow scoring protocol codec, checked against what MLflow itself writes and parses."""

from __future__ import annotations

import io
import json

import numpy as np
import orjson
import pandas as pd
import pytest
from mlflow.pyfunc import scoring_server

from inference.protocols import mlflow as protocol
from inference.validation import Column, InputSpec, to_model_input
from platform_site.errors import InvalidInput, MalformedBody, PayloadTooLarge, RateLimited, UnsupportedMediaType

IRIS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]
JSON = "application/json"

# MLflow hints that the iris target's inferred schema is integer; irrelevant to parsing.
pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer:UserWarning")


def iris_spec(*, max_rows: int = 100, allow_missing: bool = False) -> InputSpec:
    return InputSpec(
        columns=tuple(Column(name, "double", allow_missing=allow_missing) for name in IRIS),
        named=True,
        wants_frame=True,
        max_rows=max_rows,
    )


MIXED = InputSpec(
    columns=(
        Column("city", "string"),
        Column("age", "long"),
        Column("member", "boolean"),
        Column("score", "double", allow_missing=True),
    ),
    named=True,
    wants_frame=True,
    max_rows=100,
)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Two real MLflow models, fitted on a DataFrame and on an ndarray.

    Each with the input example MLflow turns into its serving example.
    """
    import mlflow.sklearn
    from mlflow.models import Model
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(return_X_y=True, as_frame=True)
    root = tmp_path_factory.mktemp("mlflow-models")
    models = {}
    for kind, X in (("pandas", features), ("numpy", features.to_numpy())):
        estimator = LogisticRegression(max_iter=300).fit(X, target)
        path = root / kind
        # Pinned requirements skip MLflow's requirement inference, which imports the model in a subprocess (~10 s).
        mlflow.sklearn.save_model(estimator, str(path), input_example=X[:2], pip_requirements=["scikit-learn"])
        models[kind] = (estimator, path, Model.load(str(path)).get_input_schema())
    return models


def parse(body: bytes | str, spec: InputSpec, content_type: str | None = JSON) -> protocol.ParsedInvocation:
    if isinstance(body, str):
        body = body.encode()
    return protocol.parse_invocations(body, content_type=content_type, spec=spec)


def mlflow_rows(body: str, names: list[str], schema=None) -> list[list]:
    """How MLflow's own scoring server reads the same JSON body, as rows in `names` order."""
    data, _ = scoring_server._split_data_and_params(body)
    parsed = scoring_server.infer_and_parse_data(data, schema)
    if isinstance(parsed, pd.DataFrame):
        return parsed[names].to_numpy().tolist()
    if isinstance(parsed, dict):
        return [list(row) for row in zip(*(np.asarray(parsed[name]).tolist() for name in names), strict=True)]
    return np.asarray(parsed).tolist()


# ---------------------------------------------------------------------------- MLflow's own examples


def test_parses_the_serving_input_example_mlflow_writes_for_a_dataframe_model(saved_models):
    estimator, path, schema = saved_models["pandas"]
    example = (path / "serving_input_example.json").read_text()
    spec = InputSpec.from_signature({"inputs": schema.to_dict(), "named": True}, wants_frame=True, max_rows=100)

    parsed = parse(example, spec)

    assert parsed.rows == [[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2]]
    assert parsed.rows == mlflow_rows(example, IRIS, schema)
    predictions = estimator.predict(to_model_input(parsed.rows, spec))
    expected = io.StringIO()
    scoring_server.predictions_to_json(predictions, expected)
    assert orjson.loads(protocol.render_predictions(predictions)) == json.loads(expected.getvalue())


def test_parses_the_serving_input_example_mlflow_writes_for_an_ndarray_model(saved_models):
    _, path, _ = saved_models["numpy"]
    example = (path / "serving_input_example.json").read_text()
    spec = InputSpec(columns=tuple(Column(f"f{i}", "double") for i in range(4)), named=False, wants_frame=False, max_rows=100)

    parsed = parse(example, spec)

    assert orjson.loads(example) == {"inputs": [[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2]]}
    assert parsed.rows == [[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2]]
    assert parsed.n_rows == 2


# ---------------------------------------------------------------------------- each format

REORDERED = [IRIS[2], IRIS[0], IRIS[3], IRIS[1]]
FORMATS = [
    pytest.param({"dataframe_split": {"columns": IRIS, "data": ROWS}}, id="split"),
    pytest.param(
        {"dataframe_split": {"columns": REORDERED, "index": [7, 8, 9], "data": [[r[2], r[0], r[3], r[1]] for r in ROWS]}},
        id="split-columns-reordered",
    ),
    pytest.param({"dataframe_records": [dict(zip(IRIS, row, strict=True)) for row in ROWS]}, id="records"),
    pytest.param(
        {"dataframe_records": [dict(zip(REORDERED, (r[2], r[0], r[3], r[1]), strict=True)) for r in ROWS]},
        id="records-keys-reordered",
    ),
    pytest.param({"instances": [dict(zip(IRIS, row, strict=True)) for row in ROWS]}, id="instances-records"),
    pytest.param({"instances": {name: [row[i] for row in ROWS] for i, name in enumerate(IRIS)}}, id="instances-columns"),
    pytest.param({"inputs": ROWS}, id="inputs-rows"),
    pytest.param({"inputs": {name: [row[i] for row in ROWS] for i, name in enumerate(IRIS)}}, id="inputs-columns"),
    pytest.param(
        {"inputs": {name: [ROWS[j][IRIS.index(name)] for j in range(3)] for name in REORDERED}}, id="inputs-columns-reordered"
    ),
]


@pytest.mark.parametrize("payload", FORMATS)
def test_parses_each_json_format_like_mlflow(payload, saved_models):
    _, _, schema = saved_models["pandas"]
    body = json.dumps(payload)

    parsed = parse(body, iris_spec())

    assert parsed.rows == ROWS
    assert parsed.n_rows == 3
    if "inputs" not in payload or isinstance(payload["inputs"], dict):
        assert mlflow_rows(body, IRIS, schema) == ROWS


def test_parses_one_record_as_one_row():
    assert parse(json.dumps({"inputs": dict(zip(IRIS, ROWS[0], strict=True))}), iris_spec()).rows == [ROWS[0]]


def test_returns_params_and_accepts_a_utf8_charset():
    body = json.dumps({"dataframe_split": {"columns": IRIS, "data": ROWS[:1]}, "params": {"probabilities": True}})

    parsed = parse(body, iris_spec(), content_type="application/json; charset=UTF-8")

    assert parsed.params == {"probabilities": True}
    assert parsed.rows == ROWS[:1]


def test_parses_csv_by_header_name_like_mlflow(saved_models):
    _, _, schema = saved_models["pandas"]
    frame = pd.DataFrame(ROWS, columns=IRIS)[REORDERED]
    body = frame.to_csv(index=False)

    parsed = parse(body, iris_spec(), content_type="text/csv")

    assert parsed.rows == ROWS
    assert parsed.rows == scoring_server.parse_csv_input(io.StringIO(body), schema)[IRIS].to_numpy().tolist()


def test_parses_csv_strings_integers_booleans_and_missing_values():
    body = 'member,city,age,score\ntrue,"Saint-Étienne, FR",31,0.5\nFalse,Lyon,47,\n'

    parsed = parse(body, MIXED, content_type="text/csv; charset=utf-8")

    assert parsed.rows == [["Saint-Étienne, FR", 31, True, 0.5], ["Lyon", 47, False, None]]


def test_an_unnamed_signature_takes_csv_and_split_columns_by_position():
    spec = InputSpec(columns=tuple(Column(f"f{i}", "double") for i in range(4)), named=False, wants_frame=False, max_rows=100)

    from_csv = parse("0,1,2,3\n5.1,3.5,1.4,0.2\n", spec, content_type="text/csv")
    from_split = parse(json.dumps({"dataframe_split": {"columns": ["w", "x", "y", "z"], "data": ROWS[:1]}}), spec)

    assert from_csv.rows == from_split.rows == [[5.1, 3.5, 1.4, 0.2]]


def test_parses_parquet_like_mlflow():
    pytest.importorskip("pyarrow")
    buffer = io.BytesIO()
    pd.DataFrame({"age": [31, 47], "city": ["Lyon", "Nice"], "member": [True, False], "score": [0.5, None]}).to_parquet(buffer)

    parsed = parse(buffer.getvalue(), MIXED, content_type="application/vnd.apache.parquet")

    assert parsed.rows == [["Lyon", 31, True, 0.5], ["Nice", 47, False, None]]


# ---------------------------------------------------------------------------- bad input

SPLIT_ONE = {"columns": IRIS, "data": ROWS[:1]}

BAD_INPUTS = [
    pytest.param(
        JSON,
        json.dumps({"dataframe_split": SPLIT_ONE, "inputs": ROWS}),
        MalformedBody,
        "BAD_REQUEST",
        None,
        "exactly one of the input fields",
        id="two-format-keys",
    ),
    pytest.param(
        JSON,
        json.dumps({"data": ROWS}),
        MalformedBody,
        "BAD_REQUEST",
        None,
        "Received dictionary with input fields: ['data']",
        id="no-format-key",
    ),
    pytest.param(JSON, json.dumps(ROWS), MalformedBody, "BAD_REQUEST", None, "Received a list", id="top-level-list"),
    pytest.param(JSON, '{"inputs": [[5.1, 3.5,', MalformedBody, "BAD_REQUEST", None, "valid JSON", id="malformed-json"),
    pytest.param(
        JSON,
        json.dumps({"dataframe_records": dict(zip(IRIS, ROWS[0], strict=True))}),
        MalformedBody,
        "BAD_REQUEST",
        None,
        "must be a list of records. Got dictionary",
        id="records-not-a-list",
    ),
    pytest.param(
        JSON,
        json.dumps({"dataframe_split": {**SPLIT_ONE, "dtypes": {}}}),
        MalformedBody,
        "BAD_REQUEST",
        None,
        "must have 'data' field",
        id="split-with-unknown-key",
    ),
    pytest.param(
        JSON,
        json.dumps({"dataframe_split": {"columns": [*IRIS[:3], "petal colour"], "data": ROWS[:1]}}),
        InvalidInput,
        "INVALID_PARAMETER_VALUE",
        {"column": "petal colour"},
        "Unknown column 'petal colour'",
        id="unknown-column",
    ),
    pytest.param(
        JSON,
        json.dumps({"dataframe_split": {"columns": IRIS[:3], "data": [r[:3] for r in ROWS]}}),
        InvalidInput,
        "INVALID_PARAMETER_VALUE",
        {"column": IRIS[3]},
        "Missing column",
        id="missing-column",
    ),
    pytest.param(
        JSON,
        json.dumps({"dataframe_records": [dict(zip(IRIS[:3], ROWS[0][:3], strict=True))]}),
        InvalidInput,
        "INVALID_PARAMETER_VALUE",
        {"row": 0, "column": IRIS[3]},
        "missing feature",
        id="record-missing-feature",
    ),
    pytest.param(
        JSON,
        json.dumps({"dataframe_split": {"columns": IRIS, "data": [ROWS[0], [6.2, "wide", 4.3, 1.3]]}}),
        InvalidInput,
        "INVALID_PARAMETER_VALUE",
        {"row": 1, "column": IRIS[1]},
        "the string 'wide'",
        id="string-in-numeric-column",
    ),
    pytest.param(
        JSON,
        json.dumps({"inputs": [ROWS[0], ROWS[1][:3]]}),
        InvalidInput,
        "INVALID_PARAMETER_VALUE",
        {"row": 1, "column": "*"},
        "has 3 values",
        id="short-row",
    ),
    pytest.param(
        JSON,
        json.dumps({"inputs": {IRIS[0]: [1.0, 2.0], IRIS[1]: [1.0], IRIS[2]: [1.0], IRIS[3]: [1.0]}}),
        InvalidInput,
        "INVALID_PARAMETER_VALUE",
        {"field": "inputs"},
        "are not the same",
        id="columns-of-different-lengths",
    ),
    pytest.param(
        JSON, json.dumps({"inputs": []}), InvalidInput, "INVALID_PARAMETER_VALUE", {"field": "inputs"}, "empty", id="empty-batch"
    ),
    pytest.param(
        JSON,
        json.dumps({"inputs": ROWS[:1], "params": [1]}),
        InvalidInput,
        "INVALID_PARAMETER_VALUE",
        {"field": "params"},
        "`params` must be an object",
        id="params-not-an-object",
    ),
    pytest.param(
        "text/csv",
        ",".join(IRIS) + "\n5.1,3.5,1.4,0.2\n6.2,inf,4.3,1.3\n",
        InvalidInput,
        "INVALID_PARAMETER_VALUE",
        {"row": 1, "column": IRIS[1]},
        "finite number, got inf",
        id="csv-infinity",
    ),
    pytest.param(
        "text/csv",
        ",".join(IRIS) + "\n5.1,3.5,1.4,0.2\nnan,2.9,4.3,1.3\n",
        InvalidInput,
        "INVALID_PARAMETER_VALUE",
        {"row": 1, "column": IRIS[0]},
        "finite number, got nan",
        id="csv-nan",
    ),
    pytest.param(
        "text/csv",
        ",".join(IRIS) + "\n5.1,3.5,1.4,0.2\n6.2,2.9,4.3,1.3,9.9\n",
        MalformedBody,
        "BAD_REQUEST",
        {"row": 1, "column": "*"},
        "has 5 fields; the header has 4",
        id="csv-extra-field",
    ),
    pytest.param(
        "text/csv",
        ",".join(IRIS) + '\n5.1,"3.5,1.4,0.2\n',
        MalformedBody,
        "BAD_REQUEST",
        None,
        "Failed to parse input as CSV",
        id="csv-unclosed-quote",
    ),
    pytest.param("text/csv", "", MalformedBody, "BAD_REQUEST", None, "CSV body is empty", id="csv-empty"),
    pytest.param(
        "text/csv",
        "a,b,c,d\n1,2,3,4\n",
        InvalidInput,
        "INVALID_PARAMETER_VALUE",
        {"column": "a"},
        "Unknown column 'a'",
        id="csv-unknown-header",
    ),
    pytest.param(
        "text/plain",
        json.dumps({"inputs": ROWS}),
        UnsupportedMediaType,
        "BAD_REQUEST",
        None,
        "only supports the following content types",
        id="unsupported-content-type",
    ),
    pytest.param(
        None, json.dumps({"inputs": ROWS}), UnsupportedMediaType, "BAD_REQUEST", None, "Send a Content-Type", id="no-content-type"
    ),
    pytest.param(
        "application/json; format=pandas-split",
        json.dumps({"inputs": ROWS}),
        UnsupportedMediaType,
        "BAD_REQUEST",
        None,
        "Unrecognized content type parameters: format",
        id="legacy-format-parameter",
    ),
    pytest.param(
        "text/csv; charset=latin-1",
        "a\n1\n",
        UnsupportedMediaType,
        "BAD_REQUEST",
        None,
        "only supports UTF-8",
        id="non-utf8-charset",
    ),
]


@pytest.mark.parametrize(("content_type", "body", "error_class", "error_code", "named", "says"), BAD_INPUTS)
def test_rejects_bad_input(content_type, body, error_class, error_code, named, says):
    with pytest.raises(error_class) as caught:
        parse(body, iris_spec(), content_type=content_type)

    assert type(caught.value) is error_class
    assert says in caught.value.detail
    if named is not None:
        assert caught.value.errors[0].items() >= named.items()
    rendered = orjson.loads(protocol.error_body(caught.value))
    assert rendered["error_code"] == error_code
    assert says in rendered["message"]


def test_rejects_more_rows_than_the_limit():
    with pytest.raises(PayloadTooLarge) as caught:
        parse(json.dumps({"dataframe_split": {"columns": IRIS, "data": ROWS}}), iris_spec(max_rows=2))

    assert caught.value.status == 413
    assert "3 rows is more than the limit of 2" in caught.value.detail


def test_a_missing_column_the_signature_allows_is_a_missing_value():
    parsed = parse(json.dumps({"dataframe_split": {"columns": IRIS[:3], "data": [ROWS[0][:3]]}}), iris_spec(allow_missing=True))

    assert parsed.rows == [[5.1, 3.5, 1.4, None]]


# ---------------------------------------------------------------------------- responses and errors


@pytest.mark.parametrize(
    "predictions",
    [
        pytest.param(np.array([0, 2, 1]), id="integer-labels"),
        pytest.param(np.array(["setosa", "virginica"], dtype=object), id="string-labels"),
        pytest.param(np.array(["setosa", "virginica"]), id="unicode-labels"),
        pytest.param(np.array([1.5, -0.25, 1e-7]), id="regression"),
        pytest.param(np.array([[0.1, 0.9], [0.5, 0.5]]), id="two-dimensional"),
    ],
)
def test_render_predictions_matches_mlflow(predictions):
    expected = io.StringIO()
    scoring_server.predictions_to_json(predictions, expected)

    assert orjson.loads(protocol.render_predictions(predictions)) == json.loads(expected.getvalue())


def test_render_predictions_appends_probabilities_when_given():
    body = protocol.render_predictions(np.array([1]), np.array([[0.25, 0.75]]))

    assert orjson.loads(body) == {"predictions": [1], "probabilities": [[0.25, 0.75]]}


def test_error_body_uses_mlflow_codes_for_other_errors():
    assert orjson.loads(protocol.error_body(RateLimited("Slow down."))) == {
        "error_code": "REQUEST_LIMIT_EXCEEDED",
        "message": "Slow down.",
    }
    assert orjson.loads(protocol.error_body(KeyError("x"))) == {
        "error_code": "INTERNAL_ERROR",
        "message": "Internal error while serving the prediction.",
    }
