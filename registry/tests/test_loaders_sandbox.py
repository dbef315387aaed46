"""The upload check in a limited child process: what it reports, and how each failure maps.

Every behaviour holds on both paths: a child forked by the runner host's fork server (the
suite's host, at MODEL_CHECK_SOCKET) and a new Python process (no fork server).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn
import skops.io
from joblib.numpy_pickle import NumpyArrayWrapper
from sklearn.cluster import DBSCAN
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from platform_site.errors import InvalidArtifact, UnsafeArtifact
from registry.loaders import sandbox_server
from registry.loaders.formats import FORMATS
from registry.loaders.sandbox import inspect_artifact
from registry.tests import malicious

RNG = np.random.RandomState(6)
X = RNG.rand(40, 4)
Y = (X[:, 0] > 0.5).astype(int)
MODEL = LogisticRegression().fit(X, Y)
FRAME = pd.DataFrame({"size": RNG.rand(40), "city": RNG.choice(["lima", "oslo"], 40)})
FRAME_MODEL = Pipeline(
    [
        ("columns", ColumnTransformer([("size", StandardScaler(), ["size"]), ("city", OneHotEncoder(), ["city"])])),
        ("model", LogisticRegression()),
    ]
).fit(FRAME, np.where(FRAME["size"] > 0.5, "big", "small"))
LIMITS = {"timeout_s": 60.0, "memory_mb": 2048}
Inspect = Callable[..., dict[str, Any]]


def _fork_server_socket() -> str:
    from django.conf import settings

    return settings.MODEL_CHECK_SOCKET


def _fork_server_status() -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(_fork_server_socket())
        sandbox_server.send_request(conn, {"op": "status"}, [])
        return json.loads(conn.makefile("rb").readline())


@pytest.fixture(params=["fork_server", "subprocess"])
def inspect(request: pytest.FixtureRequest) -> Inspect:
    """``inspect_artifact`` on one path; on the fork server's, each check must have run there."""
    on_fork_server = request.param == "fork_server"

    def run(path: str, **kwargs: Any) -> dict[str, Any]:
        if not on_fork_server:
            return inspect_artifact(path, check_socket="", **kwargs)
        before = _fork_server_status()["started_checks"]
        try:
            return inspect_artifact(path, check_socket=_fork_server_socket(), **kwargs)
        finally:
            expected = before + 1 if kwargs["fmt"] in FORMATS else before
            assert _fork_server_status()["started_checks"] == expected, "the check did not run on the fork server"

    return run


def _dump(tmp_path: Path, model: Any, name: str = "model.joblib") -> str:
    path = tmp_path / name
    joblib.dump(model, path)
    return str(path)


def test_report_describes_the_model_and_its_prediction_on_the_input_example(inspect: Inspect, tmp_path: Path) -> None:
    rows = X[:2].tolist()
    report = inspect(_dump(tmp_path, MODEL), fmt="joblib", input_example=rows, **LIMITS)
    assert report["description"] == {
        "estimator_class": "sklearn.linear_model._logistic.LogisticRegression",
        "final_estimator_class": "sklearn.linear_model._logistic.LogisticRegression",
        "task": "classification",
        "classes": [0, 1],
        "n_features": 4,
        "feature_names": None,
        "has_predict_proba": True,
        "saved_sklearn_version": sklearn.__version__,
        "running_sklearn_version": sklearn.__version__,
    }
    assert report["sample"] == {"source": "input_example", "ok": True, "predictions": MODEL.predict(X[:2]).tolist()}
    assert report["imported_django"] is False
    assert set(report) == {
        "description",
        "sample",
        "linear_spec",
        "serving_artifact",
        "load_seconds",
        "predict_seconds",
        "artifact_seconds",
        "compiled",
        "compiled_artifact",
        "compile_seconds",
        "imported_django",
    }
    # Only tree ensembles have a compiled form; a linear model says why it has none.
    assert report["compiled_artifact"] is None
    assert report["compiled"]["reason"]


def test_model_on_a_plain_array_is_tried_on_a_synthesized_zero_row_without_an_example(inspect: Inspect, tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(MODEL))
    report = inspect(str(path), fmt="pickle", input_example=None, **LIMITS)
    assert report["sample"] == {"source": "synthesized", "ok": True, "predictions": MODEL.predict(np.zeros((1, 4))).tolist()}


def test_dataframe_model_is_tried_on_dict_rows(inspect: Inspect, tmp_path: Path) -> None:
    rows = [{"city": "oslo", "size": 0.9}, {"city": "lima", "size": 0.1}]
    report = inspect(_dump(tmp_path, FRAME_MODEL), fmt="joblib", input_example=rows, **LIMITS)
    assert report["description"]["feature_names"] == ["size", "city"]
    assert report["description"]["classes"] == ["big", "small"]
    expected = FRAME_MODEL.predict(pd.DataFrame(rows)[["size", "city"]]).tolist()
    assert report["sample"] == {"source": "input_example", "ok": True, "predictions": expected}


def test_dataframe_model_without_an_example_is_tried_on_a_known_category_and_zeros(inspect: Inspect, tmp_path: Path) -> None:
    # OneHotEncoder() refuses unknown categories, so the row must use one it knows ("lima" sorts first).
    report = inspect(_dump(tmp_path, FRAME_MODEL), fmt="joblib", input_example=None, **LIMITS)
    expected = FRAME_MODEL.predict(pd.DataFrame({"size": [0.0], "city": ["lima"]})).tolist()
    assert report["sample"] == {"source": "synthesized", "ok": True, "predictions": expected}


def test_categories_are_found_through_nested_pipelines_and_column_indices(inspect: Inspect, tmp_path: Path) -> None:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OrdinalEncoder

    rows = np.array([["oslo", 1.0], ["lima", 2.0], ["oslo", 3.0]], dtype=object)
    encode = Pipeline([("impute", SimpleImputer(strategy="most_frequent")), ("encode", OrdinalEncoder())])
    model = Pipeline(
        [("columns", ColumnTransformer([("city", encode, [0])], remainder="passthrough")), ("model", LogisticRegression())]
    ).fit(rows, [0, 1, 0])
    report = inspect(_dump(tmp_path, model), fmt="joblib", input_example=None, **LIMITS)
    expected = model.predict(np.array([["lima", 0.0]], dtype=object)).tolist()
    assert report["sample"] == {"source": "synthesized", "ok": True, "predictions": expected}


def test_a_model_that_fails_on_synthesized_rows_is_noted_not_refused(inspect: Inspect, tmp_path: Path) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    frame = pd.DataFrame({"text": ["good day", "bad day", "good night", "bad night"]})
    model = Pipeline(
        [("columns", ColumnTransformer([("text", TfidfVectorizer(), "text")])), ("model", LogisticRegression())]
    ).fit(frame, [1, 0, 1, 0])
    report = inspect(_dump(tmp_path, model), fmt="joblib", input_example=None, **LIMITS)
    assert report["sample"]["source"] == "synthesized"
    assert report["sample"]["ok"] is False
    assert report["sample"]["error"].startswith("AttributeError: ")


def test_serving_artifact_is_the_checked_model_and_linear_spec_its_numbers(inspect: Inspect, tmp_path: Path) -> None:
    from registry.loaders.serving import linear_predictor_from_spec, load_serving_artifact

    report = inspect(_dump(tmp_path, MODEL), fmt="joblib", input_example=None, **LIMITS)
    served = load_serving_artifact(data=report["serving_artifact"])
    assert type(served) is LogisticRegression
    np.testing.assert_array_equal(served.predict_proba(X), MODEL.predict_proba(X), strict=True)
    assert report["linear_spec"]["coef"] == MODEL.coef_.tolist()
    predictions, probabilities = linear_predictor_from_spec(report["linear_spec"])(X)
    np.testing.assert_array_equal(predictions, MODEL.predict(X), strict=True)
    np.testing.assert_array_equal(probabilities, MODEL.predict_proba(X), strict=True)


def test_dataframe_model_has_a_serving_artifact_but_no_linear_spec(inspect: Inspect, tmp_path: Path) -> None:
    from registry.loaders.serving import load_serving_artifact

    report = inspect(_dump(tmp_path, FRAME_MODEL), fmt="joblib", input_example=None, **LIMITS)
    assert report["linear_spec"] is None
    served = load_serving_artifact(data=report["serving_artifact"])
    np.testing.assert_array_equal(served.predict(FRAME), FRAME_MODEL.predict(FRAME), strict=True)


@pytest.mark.parametrize(
    ("payload", "fmt"),
    [
        pytest.param(malicious.object_pointer_regressor, "pickle", id="pickle"),
        pytest.param(malicious.object_pointer_regressor_joblib, "joblib", id="joblib"),
    ],
)
def test_the_memory_corruption_reproduction_is_refused_by_the_upload_check(
    inspect: Inspect, tmp_path: Path, payload: Callable[[], bytes], fmt: str
) -> None:
    path = tmp_path / "model"
    path.write_bytes(payload())
    with pytest.raises(UnsafeArtifact) as raised:
        inspect(str(path), fmt=fmt, input_example=None, **LIMITS)
    assert raised.value.detail == (
        "The model file is refused: it builds a numpy dtype object whose flags is 0 where numpy's own '|O' dtype has 63."
    )


def test_a_model_fitted_with_n_jobs_predicts_and_is_served_on_one_thread(inspect: Inspect, tmp_path: Path) -> None:
    # joblib's thread pool makes a POSIX semaphore, a file the check (RLIMIT_FSIZE 0) may not write.
    from sklearn.ensemble import RandomForestClassifier

    from registry.loaders.serving import load_serving_artifact

    forest = RandomForestClassifier(n_estimators=4, n_jobs=2, random_state=0).fit(X, Y)
    report = inspect(_dump(tmp_path, forest), fmt="joblib", input_example=X[:3].tolist(), **LIMITS)
    assert report["sample"] == {"source": "input_example", "ok": True, "predictions": forest.predict(X[:3]).tolist()}
    served = load_serving_artifact(data=report["serving_artifact"])
    assert served.n_jobs == 1
    np.testing.assert_array_equal(served.predict_proba(X), forest.predict_proba(X), strict=True)


@pytest.mark.parametrize(
    ("model", "rows", "detail"),
    [
        pytest.param(
            MODEL,
            [[0.1, 0.2, 0.3]],
            "the model failed to predict on its input example: ValueError: X has 3 features, "
            "but LogisticRegression is expecting 4 features as input.",
            id="wrong_width",
        ),
        pytest.param(
            FRAME_MODEL,
            [{"size": 0.3}],
            "the model failed to predict on its input example: The input example lacks the model's columns: city",
            id="missing_column",
        ),
    ],
)
def test_prediction_failure_on_the_models_own_example_is_invalid(
    inspect: Inspect, tmp_path: Path, model: Any, rows: list[Any], detail: str
) -> None:
    with pytest.raises(InvalidArtifact) as raised:
        inspect(_dump(tmp_path, model), fmt="joblib", input_example=rows, **LIMITS)
    assert raised.value.detail == detail


def test_a_check_that_outlives_its_timeout_is_invalid(inspect: Inspect, tmp_path: Path) -> None:
    # Reading a 1.5 GiB array takes far longer than 0.1 s on either path.
    path = tmp_path / "huge"
    _huge_joblib_array(path, n_bytes=1536 * 1024 * 1024)
    with pytest.raises(InvalidArtifact) as raised:
        inspect(str(path), fmt="joblib", input_example=None, timeout_s=0.1, memory_mb=4096)
    assert raised.value.detail == "loading the model took longer than 0.1 s"
    assert raised.value.as_problem()["limit"] == "timeout_s"


def _huge_joblib_array(path: Path, *, n_bytes: int) -> None:
    """A joblib file of one float64 array of ``n_bytes``, its data a sparse hole (no disk used)."""
    wrapper = NumpyArrayWrapper(np.ndarray, (n_bytes // 8,), "C", np.dtype("float64"), allow_mmap=True)
    header = pickle.dumps(wrapper, protocol=2)[:-1]  # joblib's layout: wrapper, padding, raw data, STOP
    padding = 16 - (len(header) + 1) % 16
    with open(path, "wb") as out:
        out.write(header + bytes([padding]) + b"\xff" * padding)
        out.seek(n_bytes, io.SEEK_CUR)
        out.write(pickle.STOP)


def _huge_pickled_bytearray(path: Path, *, n_bytes: int) -> None:
    """A protocol 5 pickle of one bytearray of ``n_bytes``, its data a sparse hole."""
    with open(path, "wb") as out:
        out.write(pickle.PROTO + b"\x05" + pickle.BYTEARRAY8 + n_bytes.to_bytes(8, "little"))
        out.seek(n_bytes, io.SEEK_CUR)
        out.write(pickle.STOP)


@pytest.mark.parametrize(
    ("write", "fmt"),
    [pytest.param(_huge_joblib_array, "joblib", id="joblib_array"), pytest.param(_huge_pickled_bytearray, "pickle", id="pickle")],
)
def test_a_model_larger_than_the_memory_limit_is_invalid(inspect: Inspect, tmp_path: Path, write: Any, fmt: str) -> None:
    path = tmp_path / "huge"
    write(path, n_bytes=1536 * 1024 * 1024)
    with pytest.raises(InvalidArtifact) as raised:
        inspect(str(path), fmt=fmt, input_example=None, timeout_s=60, memory_mb=1024)
    assert raised.value.detail == "loading the model needed more than the 1024 MiB memory limit"
    assert raised.value.as_problem()["limit"] == "memory_mb"


def test_refused_globals_come_back_from_the_child_by_name(inspect: Inspect, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(malicious.pipeline_with_payload(marker)))
    with pytest.raises(UnsafeArtifact) as raised:
        inspect(str(path), fmt="pickle", input_example=None, **LIMITS)
    assert raised.value.refused_globals == [malicious.OS_SYSTEM]
    assert not marker.exists()


def test_refused_skops_types_come_back_from_the_child_by_name(inspect: Inspect, tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    skops.io.dump(Pipeline([("run", FunctionTransformer(func=eval)), ("model", MODEL)]), path)
    with pytest.raises(UnsafeArtifact) as raised:
        inspect(str(path), fmt="skops", input_example=None, **LIMITS)
    assert raised.value.refused_globals == ["builtins.eval"]


def test_mlflow_folder_is_inspected(inspect: Inspect, tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "model.zip", "w") as archive:
        archive.writestr("MLmodel", "flavors:\n  sklearn:\n    pickled_model: model.pkl\n    sklearn_version: 1.9.1\n")
        archive.writestr("model.pkl", pickle.dumps(MODEL))
    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        archive.extractall(tmp_path / "folder")
    report = inspect(str(tmp_path / "folder"), fmt="mlflow", input_example=[[1.0, 0.0, 0.0, 0.0]], **LIMITS)
    assert report["description"]["estimator_class"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert report["sample"]["predictions"] == MODEL.predict(np.array([[1.0, 0.0, 0.0, 0.0]])).tolist()


def test_a_model_that_cannot_predict_new_rows_is_invalid(inspect: Inspect, tmp_path: Path) -> None:
    with pytest.raises(InvalidArtifact) as raised:
        inspect(_dump(tmp_path, DBSCAN().fit(X)), fmt="joblib", input_example=None, **LIMITS)
    assert raised.value.detail == (
        "sklearn.cluster._dbscan.DBSCAN has no predict for new rows (it only labels the rows it was fitted on), so it "
        "cannot be served."
    )


def test_unknown_format_is_refused_before_starting_a_child(inspect: Inspect, tmp_path: Path) -> None:
    with pytest.raises(InvalidArtifact) as raised:
        inspect(str(tmp_path / "model.onnx"), fmt="onnx", input_example=None, **LIMITS)
    assert raised.value.detail == "Unknown model format 'onnx'; expected one of joblib, pickle, skops, mlflow."


def _running_checks(*, until: Callable[[list[int]], bool], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        running = _fork_server_status()["running"]
        if until(running) or time.monotonic() > deadline:
            return running
        time.sleep(0.01)


def test_the_fork_server_kills_a_check_whose_client_timed_out(tmp_path: Path) -> None:
    path = tmp_path / "huge"
    _huge_joblib_array(path, n_bytes=1536 * 1024 * 1024)
    with pytest.raises(InvalidArtifact):
        inspect_artifact(
            str(path), fmt="joblib", input_example=None, timeout_s=0.1, memory_mb=4096, check_socket=_fork_server_socket()
        )
    assert _running_checks(until=lambda running: not running, timeout=2.0) == []


def test_a_missing_fork_server_means_the_subprocess(tmp_path: Path) -> None:
    report = inspect_artifact(
        _dump(tmp_path, MODEL), fmt="joblib", input_example=None, check_socket=str(tmp_path / "nobody.sock"), **LIMITS
    )
    assert report["sample"] == {"source": "synthesized", "ok": True, "predictions": MODEL.predict(np.zeros((1, 4))).tolist()}


def test_a_forked_check_has_no_secret_in_its_environment_and_its_own_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a check is non-dumpable: only root reads its /proc files, and only root can give it a user of its own")
    path = tmp_path / "huge"
    _huge_joblib_array(path, n_bytes=1536 * 1024 * 1024)  # seconds of reading: time to look at the child
    outcome: list[BaseException] = []

    def check() -> None:
        try:
            inspect_artifact(
                str(path), fmt="joblib", input_example=None, timeout_s=60, memory_mb=4096, check_socket=_fork_server_socket()
            )
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome.append(exc)

    thread = threading.Thread(target=check)
    thread.start()
    try:
        (pid,) = _running_checks(until=bool)
        deadline = time.monotonic() + 5
        while True:  # it switches user right after the fork
            uid_line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
            if uid_line.split()[1] != "0" or time.monotonic() > deadline:
                break
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    finally:
        thread.join()
    assert os.environ["SECRET_KEY"] and os.environ["DATABASE_URL"]  # the suite's, which the host was started with
    names = {entry.split(b"=", 1)[0].decode() for entry in environment if entry}
    assert not names & {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    assert uid_line.split()[1:] == ["200000"] * 4  # RUNNER_UID_BASE: no organization's runner user
    assert isinstance(outcome[0], InvalidArtifact)
