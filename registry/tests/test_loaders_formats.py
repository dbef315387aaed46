"""Which loader a file needs, and the one in-process entry point for every format."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn
import skops.io
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.linear_model import LogisticRegression

from platform_site.errors import InvalidArtifact
from registry.loaders import detect_format, load_artifact, load_model

X = np.random.RandomState(4).rand(30, 3)
MODEL = LogisticRegression().fit(X, (X[:, 0] > 0.5).astype(int))


def _joblib(obj: object, compress: object = 0) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer, compress=compress)
    return buffer.getvalue()


def _skops() -> bytes:
    return skops.io.dumps(MODEL)


def _mlflow_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/MLmodel", "flavors:\n  sklearn:\n    pickled_model: model.pkl\n")
        archive.writestr("model/model.pkl", pickle.dumps(MODEL))
    return buffer.getvalue()


def _other_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("filename", "data", "expected"),
    [
        pytest.param("model.pkl", pickle.dumps(MODEL, protocol=5), "pickle", id="pickle_protocol5"),
        pytest.param("upload", pickle.dumps(MODEL, protocol=2), "pickle", id="binary_pickle_without_extension"),
        pytest.param("model.pkl", pickle.dumps(MODEL, protocol=0), "pickle", id="pickle_protocol0"),
        pytest.param("upload.bin", _joblib(MODEL), "joblib", id="joblib_found_by_its_array_wrapper"),
        pytest.param("model.joblib", _joblib({"n": 1}), "joblib", id="joblib_without_arrays_by_extension"),
        *(
            pytest.param("upload.bin", _joblib(MODEL, (name, 3)), "joblib", id=f"joblib_{name}")
            for name in ("zlib", "gzip", "bz2", "lzma", "xz")
        ),
        pytest.param("upload.bin", _skops(), "skops", id="skops_by_schema_json"),
        pytest.param("model.skops", _skops()[:512], "skops", id="skops_prefix_by_extension"),
        pytest.param("upload.bin", _mlflow_zip(), "mlflow", id="mlflow_by_mlmodel"),
        pytest.param("model.zip", _other_zip()[:20], "mlflow", id="zip_prefix_by_extension"),
    ],
)
def test_detect_format(filename: str, data: bytes, expected: str) -> None:
    assert detect_format(filename=filename, first_bytes=data) == expected


@pytest.mark.parametrize(
    ("filename", "data", "detail"),
    [
        pytest.param(
            "notes.txt",
            b"hello world",
            "'notes.txt' is not a recognised model file: expected a pickle, a joblib file, a skops file or an MLflow zip.",
            id="text",
        ),
        pytest.param(
            "model.bin",
            pickle.dumps(MODEL, protocol=0),
            "'model.bin' is not a recognised model file: expected a pickle, a joblib file, a skops file or an MLflow zip.",
            id="protocol0_needs_an_extension",
        ),
        pytest.param(
            "archive.bin",
            _other_zip(),
            "'archive.bin' is a zip, but neither a skops file (.skops) nor an MLflow model folder (.zip).",
            id="unknown_zip",
        ),
    ],
)
def test_detect_format_refuses_unknown_files(filename: str, data: bytes, detail: str) -> None:
    with pytest.raises(InvalidArtifact) as raised:
        detect_format(filename=filename, first_bytes=data)
    assert raised.value.detail == detail


@pytest.mark.parametrize("fmt", ["joblib", "pickle", "skops", "mlflow"])
def test_load_model_reads_every_format(tmp_path: Path, fmt: str) -> None:
    if fmt == "mlflow":
        with zipfile.ZipFile(io.BytesIO(_mlflow_zip())) as archive:
            archive.extractall(tmp_path)
        path = tmp_path / "model"
    else:
        path = tmp_path / f"model.{fmt}"
        path.write_bytes({"joblib": _joblib(MODEL, 3), "pickle": pickle.dumps(MODEL), "skops": _skops()}[fmt])
    np.testing.assert_array_equal(load_model(path, fmt=fmt).predict(X), MODEL.predict(X))


def test_load_model_refuses_unknown_formats(tmp_path: Path) -> None:
    with pytest.raises(InvalidArtifact) as raised:
        load_model(tmp_path / "model.onnx", fmt="onnx")
    assert raised.value.detail == "Unknown model format 'onnx'; expected one of joblib, pickle, skops, mlflow."


def test_load_artifact_reports_the_version_the_model_was_saved_with(tmp_path: Path) -> None:
    running = sklearn.__version__.encode()
    older = b"0" * len(running)  # same length, so the pickle's string lengths still hold
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(MODEL).replace(running, older))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InconsistentVersionWarning)
        loaded = load_artifact(path, fmt="pickle")
    assert loaded.saved_sklearn_version == older.decode()
    assert loaded.fmt == "pickle"


def test_load_artifact_checks_structures_in_skops_files_too(tmp_path: Path) -> None:
    from sklearn.tree import DecisionTreeClassifier

    model = DecisionTreeClassifier(random_state=0).fit(X, (X[:, 0] > 0.5).astype(int))
    state = model.tree_.__getstate__()
    state["nodes"] = state["nodes"].copy()
    state["nodes"]["left_child"][0] = 10_000
    model.tree_.__setstate__(state)  # never predicted on: it would read past its nodes
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)
    with pytest.raises(InvalidArtifact) as raised:
        load_artifact(path, fmt="skops")
    assert raised.value.detail == (
        "The model's decision tree is corrupt: a left child index points outside the node array or back up the tree."
    )
