"""Batch jobs through the API, with the worker steps run in this process (the real workers: test_batch_workers.py)."""

from __future__ import annotations

import gzip
import io
import os

import numpy as np
import orjson
import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from sklearn.linear_model import LinearRegression

from inference.batch import services, storage
from inference.models import BatchChunk, BatchJob, BatchLimits, PredictionRecord
from registry.tests import factories as f

pytestmark = pytest.mark.django_db

FEATURES = f.IRIS_FEATURES


@pytest.fixture(autouse=True)
def small_chunks(settings):
    settings.BATCH_CHUNK_ROWS = 100


@pytest.fixture
def named(tenant_a):
    """An iris model fitted on a DataFrame: its signature names the four columns."""
    from accounts.principals import Caller
    from registry import services as registry_services

    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="named")
    f.create_version(model, f.iris_frame_model(), promote=True)
    return model


@pytest.fixture
def unnamed(tenant_a):
    """An iris model fitted on an array: columns are taken by position."""
    from accounts.principals import Caller
    from registry import services as registry_services

    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    f.create_version(model, f.iris_model(), promote=True)
    return model


def iris_rows(n: int, seed: int = 0) -> np.ndarray:
    x, _ = f.iris_data()
    rng = np.random.default_rng(seed)
    return np.round(x[rng.integers(0, len(x), size=n)] + rng.normal(scale=0.05, size=(n, 4)), 3)


def csv_bytes(rows: np.ndarray, header: list[str] = FEATURES) -> bytes:
    lines = [",".join(header)] + [",".join(repr(float(v)) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def submit(tenant, content: bytes, *, model: str = "named", name: str = "rows.csv", **fields):
    upload = SimpleUploadedFile(name, content, content_type="application/octet-stream")
    return tenant.key_client().post(f"/api/v1/models/acme/{model}/batch-jobs", {"file": upload, **fields}, format="multipart")


def run_job(job_id: int) -> BatchJob:
    """What the workers do, in order, in this process."""
    services.split_job(job_id=job_id)
    for index in BatchChunk.objects.filter(job_id=job_id).order_by("index").values_list("index", flat=True):
        services.score_chunk(job_id=job_id, index=index, worker="test")
    services.assemble_result(job_id=job_id)
    return BatchJob.objects.get(id=job_id)


def result_of(tenant, job_id: int) -> bytes:
    response = tenant.key_client().get(f"/api/v1/batch-jobs/{job_id}/result")
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content)


def submitted_job(tenant, content: bytes, **kwargs) -> BatchJob:
    response = submit(tenant, content, **kwargs)
    assert response.status_code == 202, response.content
    return BatchJob.objects.get(id=response.json()["id"])


# ------------------------------------------------------------------------------ the happy path


def test_submit_answers_202_with_the_queued_job_before_any_scoring(tenant_a, named):
    response = submit(tenant_a, csv_bytes(iris_rows(250)))
    assert response.status_code == 202, response.content
    body = response.json()
    assert response["Location"] == f"/api/v1/batch-jobs/{body['id']}"
    assert body["status"] == "queued"
    assert body["model"] == "acme/named" and body["version"] == 1
    assert (body["rows_total"], body["rows_done"], body["progress"]) == (None, 0, 0.0)
    assert body["on_error"] == "fail" and body["probabilities"] is False and body["format"] == "csv"
    assert body["result"] is None and body["webhook"] is None and body["webhook_secret"] is None
    assert not BatchChunk.objects.filter(job_id=body["id"]).exists()
    job = BatchJob.objects.get(id=body["id"])
    assert storage.read_bytes(job.input_name) == csv_bytes(iris_rows(250))


def test_result_has_every_row_in_order_with_the_models_predictions(tenant_a, named):
    rows = iris_rows(250)
    job = run_job(submitted_job(tenant_a, csv_bytes(rows)).id)
    assert (job.status, job.rows_total, job.rows_done, job.chunks_total, job.chunks_done) == ("succeeded", 250, 250, 3, 3)
    detail = tenant_a.key_client().get(f"/api/v1/batch-jobs/{job.id}").json()
    assert detail["progress"] == 1.0 and detail["result"] == f"/api/v1/batch-jobs/{job.id}/result"
    result = pd.read_csv(io.BytesIO(result_of(tenant_a, job.id)))
    assert list(result.columns) == [*FEATURES, "prediction"]
    expected = f.iris_frame_model().predict(pd.DataFrame(rows, columns=FEATURES))
    np.testing.assert_array_equal(result[FEATURES].to_numpy(), rows)
    np.testing.assert_array_equal(result["prediction"].to_numpy(), expected)


def test_input_lines_are_kept_as_sent_and_columns_may_come_in_any_order(tenant_a, named):
    reordered = ["petal_width", "sepal_length", "petal_length", "sepal_width"]
    content = b"petal_width,sepal_length,petal_length,sepal_width\r\n0.2,5.1,1.4,3.5\r\n\r\n2.3,6.9,5.7,3.1\r\n1.50,6.0,4.5,2.9"
    job = run_job(submitted_job(tenant_a, content).id)
    lines = result_of(tenant_a, job.id).decode().splitlines()
    expected = f.iris_frame_model().predict(
        pd.DataFrame([[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.7, 2.3], [6.0, 2.9, 4.5, 1.5]], columns=FEATURES)
    )
    assert lines == [
        ",".join(reordered) + ",prediction",
        f"0.2,5.1,1.4,3.5,{expected[0]}",
        f"2.3,6.9,5.7,3.1,{expected[1]}",
        f"1.50,6.0,4.5,2.9,{expected[2]}",
    ]
    assert job.rows_total == 3


def test_probabilities_are_appended_one_column_per_class(tenant_a, named):
    rows = iris_rows(120)
    job = run_job(submitted_job(tenant_a, csv_bytes(rows), probabilities="true").id)
    result = pd.read_csv(io.BytesIO(result_of(tenant_a, job.id)))
    assert list(result.columns) == [*FEATURES, "prediction", "probability_0", "probability_1", "probability_2"]
    expected = f.iris_frame_model().predict_proba(pd.DataFrame(rows, columns=FEATURES))
    np.testing.assert_array_equal(result[["probability_0", "probability_1", "probability_2"]].to_numpy(), expected)


def test_json_lines_in_json_lines_out(tenant_a, named):
    rows = iris_rows(150)
    content = b"".join(orjson.dumps(dict(zip(FEATURES, row.tolist(), strict=True))) + b"\n" for row in rows)
    job = run_job(submitted_job(tenant_a, content, name="rows.jsonl", probabilities="true").id)
    assert job.input_format == "jsonl"
    response = tenant_a.key_client().get(f"/api/v1/batch-jobs/{job.id}/result")
    assert response["Content-Type"] == "application/x-ndjson"
    out = [orjson.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    expected = f.iris_frame_model().predict(pd.DataFrame(rows, columns=FEATURES))
    assert [line["prediction"] for line in out] == expected.tolist()
    assert [[line[name] for name in FEATURES] for line in out] == rows.tolist()
    assert set(out[0]) == {*FEATURES, "prediction", "probability_0", "probability_1", "probability_2"}


def test_json_lines_of_lists_for_a_model_fitted_on_arrays(tenant_a, unnamed):
    rows = iris_rows(30)
    content = b"".join(orjson.dumps(row.tolist()) + b"\n" for row in rows)
    job = run_job(submitted_job(tenant_a, content, model="iris", name="rows.ndjson").id)
    out = [orjson.loads(line) for line in result_of(tenant_a, job.id).splitlines()]
    assert [line[:4] for line in out] == rows.tolist()
    assert [line[4] for line in out] == f.iris_model().predict(rows).tolist()


def test_gzip_input_is_read_whatever_its_name(tenant_a, named):
    rows = iris_rows(130)
    job = run_job(submitted_job(tenant_a, gzip.compress(csv_bytes(rows)), name="upload.bin").id)
    assert job.input_compressed and job.input_name.endswith(".csv.gz")
    result = pd.read_csv(io.BytesIO(result_of(tenant_a, job.id)))
    np.testing.assert_array_equal(
        result["prediction"].to_numpy(), f.iris_frame_model().predict(pd.DataFrame(rows, columns=FEATURES))
    )


def test_csv_header_names_do_not_matter_for_a_model_fitted_on_arrays(tenant_a, unnamed):
    rows = iris_rows(10)
    job = run_job(submitted_job(tenant_a, csv_bytes(rows, ["a", "b", "c", "d"]), model="iris").id)
    result = pd.read_csv(io.BytesIO(result_of(tenant_a, job.id)))
    assert result["prediction"].tolist() == f.iris_model().predict(rows).tolist()


def test_quoted_fields_with_newlines_stay_one_row(tenant_a):
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from accounts.principals import Caller
    from registry import services as registry_services

    frame = pd.DataFrame({"note": ["a", "b\nc", "a", "b\nc"], "x": [0.0, 1.0, 0.1, 0.9]})
    pipe = make_pipeline(
        ColumnTransformer([("n", OneHotEncoder(handle_unknown="ignore"), ["note"])], remainder="passthrough"), LinearRegression()
    )
    pipe.fit(frame, [0.0, 1.0, 0.0, 1.0])
    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="notes")
    version = f.create_version(model, pipe, promote=True)
    version.signature = {"inputs": [{"name": "note", "type": "string"}, {"name": "x", "type": "double"}], "named": True}
    version.save()
    content = b'note,x\n"b\nc",1.0\na,0.0\n"say ""hi""",0.5\n'
    job = run_job(submitted_job(tenant_a, content, model="notes").id)
    assert job.rows_total == 3
    result = pd.read_csv(io.BytesIO(result_of(tenant_a, job.id)))
    assert result["note"].tolist() == ["b\nc", "a", 'say "hi"']
    expected = pipe.predict(pd.DataFrame({"note": ["b\nc", "a", 'say "hi"'], "x": [1.0, 0.0, 0.5]}))
    np.testing.assert_allclose(result["prediction"].to_numpy(), expected)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "header, missing, extra",
    [
        (["sepal_length", "sepal_width", "petal_length"], ["petal_width"], []),
        ([*FEATURES, "colour"], [], ["colour"]),
        (["sepal_length", "sepal_width", "petal_length", "petal_wdth"], ["petal_width"], ["petal_wdth"]),
        (["sepal_length", "colour", "size"], ["sepal_width", "petal_length", "petal_width"], ["colour", "size"]),
    ],
    ids=["missing", "extra", "misspelt", "several"],
)
def test_header_must_match_the_signature_naming_each_column(tenant_a, named, header, missing, extra):
    content = (",".join(header) + "\n" + ",".join(["1.0"] * len(header)) + "\n").encode()
    response = submit(tenant_a, content)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid_input"
    assert body["errors"] == [{"column": c, "message": "missing column"} for c in missing] + [
        {"column": c, "message": "unexpected column; the model does not take it"} for c in extra
    ]
    assert not BatchJob.objects.exists()


def test_json_lines_keys_are_checked_like_a_header(tenant_a, named):
    response = submit(tenant_a, b'{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "colour": 1}\n', name="x.jsonl")
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"column": "petal_width", "message": "missing column"},
        {"column": "colour", "message": "unexpected column; the model does not take it"},
    ]


def test_positional_model_refuses_a_wrong_column_count(tenant_a, unnamed):
    response = submit(tenant_a, b"a,b,c,d,e\n1,2,3,4,5\n", model="iris")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"column": "e", "message": "unexpected column; the model does not take it"}]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "The file is empty: send a CSV with a header row, or JSON lines."),
        (b"\n\n", "The file is empty: send a CSV with a header row, or JSON lines."),
        (b"sepal_length,sepal_width,petal_length,petal_width\n", "The file has a header but no rows."),
        (b"\x1f\x8bnot really gzip", None),
    ],
    ids=["empty", "blank", "header-only", "broken-gzip"],
)
def test_unusable_files_are_400(tenant_a, named, content, message):
    response = submit(tenant_a, content)
    assert response.status_code == 400, response.content
    assert response.json()["errors"][0]["field"] == "file"
    if message:
        assert response.json()["detail"] == message


@pytest.mark.parametrize(
    "cell, column, message",
    [
        ("abc", "petal_length", "expected a number, got the string 'abc'"),
        ("", "petal_length", "missing value; expected a number"),
        ("inf", "petal_length", "expected a finite number, got inf"),
        ("True", "petal_length", "expected a number, got the string 'True'"),
        ("1.4,9", "*", "expected 4 fields like the header, got 5"),
    ],
    ids=["string", "empty", "infinite", "boolean-text", "extra-field"],
)
def test_bad_value_fails_the_job_naming_row_and_column(tenant_a, named, cell, column, message):
    rows = iris_rows(500)
    lines = csv_bytes(rows).decode().splitlines()
    cells = lines[1 + 213].split(",")
    cells[2] = cell
    lines[1 + 213] = ",".join(cells)
    job = run_job(submitted_job(tenant_a, ("\n".join(lines) + "\n").encode()).id)
    assert job.status == "failed"
    assert job.error == f"Row 213, column '{column}': {message}."
    assert job.errors == [{"row": 213, "column": column, "message": message}]
    detail = tenant_a.key_client().get(f"/api/v1/batch-jobs/{job.id}").json()
    assert detail["status"] == "failed" and detail["error"] == job.error and detail["errors"] == job.errors
    response = tenant_a.key_client().get(f"/api/v1/batch-jobs/{job.id}/result")
    assert response.status_code == 409 and response.json()["code"] == "conflict"


@pytest.mark.parametrize(
    "line, column, message",
    [
        (
            b'{"sepal_length": 5.1, "sepal_width": "wide", "petal_length": 1.4, "petal_width": 0.2}',
            "sepal_width",
            "expected a number, got the string 'wide'",
        ),
        (b'{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}', "petal_width", "missing feature"),
        (
            b'{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": null}',
            "petal_width",
            "missing value; expected a number",
        ),
        (b"{not json", "*", None),
        (b"[1, 2]", "*", "expected 4 values, got 2"),
    ],
    ids=["string", "missing-key", "null", "not-json", "short-list"],
)
def test_bad_json_line_fails_the_job_naming_row_and_column(tenant_a, named, line, column, message):
    good = [orjson.dumps(dict(zip(FEATURES, row.tolist(), strict=True))) for row in iris_rows(150)]
    good[120] = line
    job = run_job(submitted_job(tenant_a, b"\n".join(good) + b"\n", name="x.jsonl").id)
    assert job.status == "failed"
    assert job.errors[0]["row"] == 120 and job.errors[0]["column"] == column
    if message:
        assert job.errors[0]["message"] == message


def test_on_error_skip_writes_an_error_column_and_goes_on(tenant_a, named):
    rows = iris_rows(300)
    lines = csv_bytes(rows).decode().splitlines()
    for row in (5, 150, 299):
        cells = lines[1 + row].split(",")
        cells[1] = "n/a" if row != 150 else "wide"
        lines[1 + row] = ",".join(cells)
    job = run_job(submitted_job(tenant_a, ("\n".join(lines) + "\n").encode(), on_error="skip").id)
    assert (job.status, job.rows_done, job.rows_failed) == ("succeeded", 300, 3)
    result = pd.read_csv(io.BytesIO(result_of(tenant_a, job.id)), keep_default_na=False, dtype=str)
    assert list(result.columns) == [*FEATURES, "prediction", "error"]
    assert result.loc[150, "error"] == "column 'sepal_width': expected a number, got the string 'wide'"
    assert result.loc[5, "error"] == "column 'sepal_width': missing value; expected a number"
    assert result.loc[[5, 150, 299], "prediction"].tolist() == ["", "", ""]
    good = [i for i in range(300) if i not in (5, 150, 299)]
    assert (result.loc[good, "error"] == "").all()
    expected = f.iris_frame_model().predict(pd.DataFrame(rows[good], columns=FEATURES))
    assert result.loc[good, "prediction"].astype(int).tolist() == expected.tolist()
    assert result.loc[good, "sepal_length"].astype(float).tolist() == rows[good, 0].tolist()


@pytest.mark.parametrize(
    "fields, status, field",
    [
        ({"on_error": "ignore"}, 400, "on_error"),
        ({"probabilities": "maybe"}, 400, "probabilities"),
        ({"webhook": "ftp://example.com/x"}, 400, "webhook"),
        ({"colour": "red"}, 400, "colour"),
        ({"version": "7"}, 404, None),
    ],
    ids=["on-error", "probabilities", "webhook-scheme", "unknown-field", "missing-version"],
)
def test_bad_options_are_refused(tenant_a, named, fields, status, field):
    response = submit(tenant_a, csv_bytes(iris_rows(3)), **fields)
    assert response.status_code == status, response.content
    if field:
        assert response.json()["errors"][0]["field"] == field


def test_file_field_is_required(tenant_a, named):
    response = tenant_a.key_client().post("/api/v1/models/acme/named/batch-jobs", {"probabilities": "true"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "file", "message": "required"}]


def test_probabilities_of_a_regressor_are_refused(tenant_a):
    from accounts.principals import Caller
    from registry import services as registry_services

    model = registry_services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="reg")
    f.create_version(model, f.regression_model(), promote=True)
    response = submit(tenant_a, b"f0,f1,f2\n1,2,3\n", model="reg", probabilities="true")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "probabilities", "message": "the model has no probabilities"}]


def test_explicit_version_and_missing_production(tenant_a, named):
    from sklearn.dummy import DummyClassifier

    f.create_version(
        named,
        DummyClassifier(strategy="constant", constant=2).fit(pd.DataFrame(f.iris_data()[0], columns=FEATURES), f.iris_data()[1]),
    )
    job = run_job(submitted_job(tenant_a, csv_bytes(iris_rows(4)), version="2").id)
    assert job.version.number == 2
    assert pd.read_csv(io.BytesIO(result_of(tenant_a, job.id)))["prediction"].tolist() == [2, 2, 2, 2]
    named.production_version = None
    named.save()
    response = submit(tenant_a, csv_bytes(iris_rows(4)))
    assert response.status_code == 409
    assert response.json()["errors"] == [{"field": "version", "message": "no production version"}]


# ------------------------------------------------------------------------------ limits


def test_file_over_the_size_limit_is_413(tenant_a, named, settings):
    settings.BATCH_MAX_FILE_BYTES = 2000
    response = submit(tenant_a, csv_bytes(iris_rows(200)))
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_compressed_file_is_measured_uncompressed(tenant_a, named, settings):
    settings.BATCH_MAX_FILE_BYTES = 5000
    content = gzip.compress(csv_bytes(np.tile(iris_rows(1), (1000, 1))))
    assert len(content) < 5000
    response = submit(tenant_a, content)
    assert response.status_code == 413


def test_rows_over_the_limit_are_413(tenant_a, named, settings):
    settings.BATCH_MAX_ROWS = 99
    assert submit(tenant_a, csv_bytes(iris_rows(99))).status_code == 202
    response = submit(tenant_a, csv_bytes(iris_rows(100)))
    assert response.status_code == 413
    assert response.json()["detail"] == "The file has 100 rows; this organization's limit is 99 rows per job."


def test_organization_limits_override_the_platform_defaults(tenant_a, named, settings):
    settings.BATCH_MAX_ROWS = 1000
    BatchLimits.objects.create(organization=tenant_a.organization, max_rows=10)
    assert submit(tenant_a, csv_bytes(iris_rows(11))).status_code == 413
    assert submit(tenant_a, csv_bytes(iris_rows(10))).status_code == 202


def test_concurrent_jobs_over_the_limit_are_429_until_one_ends(tenant_a, named, settings):
    settings.BATCH_MAX_CONCURRENT_JOBS = 2
    first = submitted_job(tenant_a, csv_bytes(iris_rows(5)))
    submitted_job(tenant_a, csv_bytes(iris_rows(5)))
    response = submit(tenant_a, csv_bytes(iris_rows(5)))
    assert response.status_code == 429
    assert response.json()["code"] == "too_many_batch_jobs"
    assert response["Retry-After"] == "30"
    run_job(first.id)
    assert submit(tenant_a, csv_bytes(iris_rows(5))).status_code == 202


def test_rows_limit_is_enforced_again_by_the_split(tenant_a, named, settings):
    job = submitted_job(tenant_a, csv_bytes(iris_rows(50)))
    settings.BATCH_MAX_ROWS = 20  # lowered after submission
    job = run_job(job.id)
    assert job.status == "failed"
    assert job.error == "The file has more than 20 rows, this organization's limit per job."


# ------------------------------------------------------------------------------ cancel, reruns


def test_cancel_stops_the_remaining_chunks(tenant_a, named):
    job = submitted_job(tenant_a, csv_bytes(iris_rows(450)))
    services.split_job(job_id=job.id)
    services.score_chunk(job_id=job.id, index=0)
    response = tenant_a.key_client().post(f"/api/v1/batch-jobs/{job.id}/cancel")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"] is not None
    for index in range(1, 5):
        services.score_chunk(job_id=job.id, index=index)
    services.assemble_result(job_id=job.id)
    job.refresh_from_db()
    assert (job.status, job.rows_done, job.chunks_done) == ("cancelled", 100, 1)
    for index in range(1, 5):
        assert not storage.exists(storage.part_name(job.storage_prefix, index))
    assert tenant_a.key_client().get(f"/api/v1/batch-jobs/{job.id}/result").status_code == 409
    again = tenant_a.key_client().post(f"/api/v1/batch-jobs/{job.id}/cancel")
    assert again.status_code == 409
    assert again.json()["detail"] == "The job is already cancelled."
    services.discard_intermediate_files(job_id=job.id)
    assert not storage.exists(storage.chunk_name(job.storage_prefix, 0))
    assert not storage.exists(storage.part_name(job.storage_prefix, 0))


def test_cancel_before_the_split_means_nothing_runs(tenant_a, named):
    job = submitted_job(tenant_a, csv_bytes(iris_rows(10)))
    assert tenant_a.key_client().post(f"/api/v1/batch-jobs/{job.id}/cancel").status_code == 200
    job = run_job(job.id)
    assert (job.status, job.rows_total, job.started_at) == ("cancelled", None, None)
    assert not BatchChunk.objects.filter(job=job).exists()


def test_chunk_task_run_twice_writes_its_part_and_counts_its_rows_once(tenant_a, named):
    from inference.batch import tasks

    job = submitted_job(tenant_a, csv_bytes(iris_rows(250)))
    services.split_job(job_id=job.id)
    tasks.score_batch_chunk(job.id, 1)
    part = storage.batch_storage().path(storage.part_name(job.storage_prefix, 1))
    first = (os.stat(part).st_ino, os.stat(part).st_mtime_ns, open(part, "rb").read())
    tasks.score_batch_chunk(job.id, 1)
    assert (os.stat(part).st_ino, os.stat(part).st_mtime_ns, open(part, "rb").read()) == first
    job.refresh_from_db()
    assert (job.rows_done, job.chunks_done) == (100, 1)
    assert BatchChunk.objects.get(job=job, index=1).attempts == 1  # the second run saw it done
    assert PredictionRecord.objects.filter(prediction_id=f"batch_{job.id}_1", rows=100, protocol="batch").count() == 1


def test_two_runs_of_one_chunk_at_the_same_time_count_it_once(tenant_a, named, monkeypatch):
    job = submitted_job(tenant_a, csv_bytes(iris_rows(250)))
    services.split_job(job_id=job.id)
    write = storage.write_bytes_once

    def twin_finishes_first(name, data):
        # A redelivered twin of this task runs start to end while this run is between its
        # checks and its count: both saw the chunk not done.
        monkeypatch.setattr(storage, "write_bytes_once", write)
        services.score_chunk(job_id=job.id, index=1, worker="twin")
        return write(name, data)

    monkeypatch.setattr(storage, "write_bytes_once", twin_finishes_first)
    services.score_chunk(job_id=job.id, index=1, worker="first")
    job.refresh_from_db()
    assert (job.rows_done, job.chunks_done) == (100, 1)
    assert BatchChunk.objects.get(job=job, index=1).attempts == 2
    assert PredictionRecord.objects.filter(prediction_id=f"batch_{job.id}_1").count() == 1


def test_a_run_that_died_after_writing_its_part_is_finished_by_the_next_without_rewriting(tenant_a, named, monkeypatch):
    job = submitted_job(tenant_a, csv_bytes(iris_rows(250)))
    services.split_job(job_id=job.id)

    def dies(**kwargs):
        raise SystemExit("worker killed")  # what SIGKILL would leave: the part written, nothing counted

    monkeypatch.setattr(services, "_count_chunk", dies)
    with pytest.raises(SystemExit):
        services.score_chunk(job_id=job.id, index=2)
    monkeypatch.undo()
    part = storage.batch_storage().path(storage.part_name(job.storage_prefix, 2))
    written = (os.stat(part).st_ino, os.stat(part).st_mtime_ns, open(part, "rb").read())
    job.refresh_from_db()
    assert job.rows_done == 0
    services.score_chunk(job_id=job.id, index=2)
    assert (os.stat(part).st_ino, os.stat(part).st_mtime_ns, open(part, "rb").read()) == written
    chunk = BatchChunk.objects.get(job=job, index=2)
    assert (chunk.is_done, chunk.attempts) == (True, 2)
    job = run_job(job.id)
    assert (job.status, job.rows_done) == ("succeeded", 250)
    result = pd.read_csv(io.BytesIO(result_of(tenant_a, job.id)))
    assert len(result) == 250


def test_split_and_assembly_run_twice_change_nothing(tenant_a, named):
    rows = iris_rows(250)
    job = run_job(submitted_job(tenant_a, csv_bytes(rows)).id)
    result = result_of(tenant_a, job.id)
    services.split_job(job_id=job.id)
    services.assemble_result(job_id=job.id)
    job.refresh_from_db()
    assert (job.status, job.rows_total, job.rows_done, BatchChunk.objects.filter(job=job).count()) == ("succeeded", 250, 250, 3)
    assert result_of(tenant_a, job.id) == result


def test_a_task_that_keeps_failing_fails_the_job(tenant_a, named):
    from inference.batch import tasks

    job = submitted_job(tenant_a, csv_bytes(iris_rows(150)))
    services.split_job(job_id=job.id)
    storage.delete(storage.chunk_name(job.storage_prefix, 1))  # storage lost the file: retried, then given up
    tasks.score_batch_chunk.apply(args=(job.id, 1))
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error.startswith("The batch worker failed (FileNotFoundError")


def test_one_prediction_record_per_chunk_for_analytics(tenant_a, named):
    job = run_job(submitted_job(tenant_a, csv_bytes(iris_rows(250))).id)
    records = PredictionRecord.objects.filter(protocol="batch").order_by("prediction_id")
    assert [(r.prediction_id, r.rows, r.version_id, r.organization_id) for r in records] == [
        (f"batch_{job.id}_{i}", n, job.version_id, tenant_a.organization.id) for i, n in enumerate([100, 100, 50])
    ]
    assert len(records[0].inputs) == 100 and len(records[0].inputs[0]) == 4


# ------------------------------------------------------------------------------ lists and access


def test_lists_per_model_and_per_organization(tenant_a, named, unnamed):
    a = submitted_job(tenant_a, csv_bytes(iris_rows(3)))
    b = submitted_job(tenant_a, csv_bytes(iris_rows(3)), model="iris")
    run_job(a.id)
    client = tenant_a.key_client()
    assert [j["id"] for j in client.get("/api/v1/models/acme/named/batch-jobs").json()["results"]] == [a.id]
    assert [j["id"] for j in client.get("/api/v1/batch-jobs").json()["results"]] == [b.id, a.id]
    assert [j["id"] for j in client.get("/api/v1/batch-jobs?status=queued").json()["results"]] == [b.id]
    assert client.get("/api/v1/batch-jobs?status=lost").status_code == 400


def test_scopes_and_roles(tenant_a, named):
    from rest_framework.test import APIClient
    from rest_framework_simplejwt.tokens import RefreshToken

    from accounts.models import Membership, Role
    from accounts.tests.factories import UserFactory

    job = submitted_job(tenant_a, csv_bytes(iris_rows(3)))
    predict_key = (
        tenant_a.jwt_client()
        .post("/api/v1/orgs/acme/api-keys", {"name": "p", "scopes": ["predict"]}, format="json")
        .json()["key"]
    )
    read_key = (
        tenant_a.jwt_client().post("/api/v1/orgs/acme/api-keys", {"name": "r", "scopes": ["read"]}, format="json").json()["key"]
    )
    upload = lambda: {"file": SimpleUploadedFile("r.csv", csv_bytes(iris_rows(3)))}  # noqa: E731
    assert (
        tenant_a.key_client(predict_key).post("/api/v1/models/acme/named/batch-jobs", upload(), format="multipart").status_code
        == 202
    )
    assert (
        tenant_a.key_client(read_key).post("/api/v1/models/acme/named/batch-jobs", upload(), format="multipart").status_code
        == 403
    )
    assert tenant_a.key_client(read_key).get(f"/api/v1/batch-jobs/{job.id}").status_code == 200
    assert tenant_a.key_client(read_key).post(f"/api/v1/batch-jobs/{job.id}/cancel").status_code == 403
    viewer = UserFactory(email="viewer@acme.example")
    Membership.objects.create(user=viewer, organization=tenant_a.organization, role=Role.VIEWER)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(viewer).access_token}")
    assert client.get(f"/api/v1/batch-jobs/{job.id}").status_code == 200
    assert client.post("/api/v1/models/acme/named/batch-jobs", upload(), format="multipart").status_code == 403
    assert client.post(f"/api/v1/batch-jobs/{job.id}/cancel").status_code == 403
    assert tenant_a.jwt_client().post(f"/api/v1/batch-jobs/{job.id}/cancel").status_code == 200


def test_unauthenticated_is_refused(api_client, named):
    assert api_client.get("/api/v1/batch-jobs").status_code == 401


def test_stalled_jobs_get_their_unfinished_tasks_sent_again(
    tenant_a, named, monkeypatch, django_capture_on_commit_callbacks, settings
):
    settings.BATCH_STALL_SECONDS = 600
    sent = []
    monkeypatch.setattr(services, "_enqueue", lambda step, job_id, index=None: sent.append((step, job_id, index)))
    never_split = submitted_job(tenant_a, csv_bytes(iris_rows(10)))
    half_done = submitted_job(tenant_a, csv_bytes(iris_rows(350)))
    services.split_job(job_id=half_done.id)
    services.score_chunk(job_id=half_done.id, index=1)
    fresh = submitted_job(tenant_a, csv_bytes(iris_rows(10)))
    long_ago = timezone.now() - timezone.timedelta(seconds=601)
    BatchJob.objects.filter(id__in=[never_split.id, half_done.id]).update(progressed_at=long_ago)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.requeue_stalled_jobs() == 2
    assert sorted(sent) == sorted([("split", never_split.id, None)] + [("chunk", half_done.id, i) for i in (0, 2, 3)])
    assert fresh.id not in {job_id for _, job_id, _ in sent}
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert services.requeue_stalled_jobs() == 0  # their clocks were reset
    assert sent == []
