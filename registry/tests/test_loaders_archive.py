"""MLflow model zips: real folders written by mlflow.sklearn.save_model, and hostile zips."""

from __future__ import annotations

import stat
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from platform_site.errors import InvalidArtifact, PayloadTooLarge, UnsafeArtifact
from registry.loaders.archive import ZipLimits, extract_mlflow_archive, extract_zip_safely, read_mlflow_model
from registry.loaders.formats import load_model

MiB = 1024 * 1024
RNG = np.random.RandomState(1)
FRAME = pd.DataFrame({"age": RNG.rand(40) * 60, "income": RNG.rand(40) * 900, "city": RNG.choice(["paris", "lima", "oslo"], 40)})
LABELS = np.where(FRAME["age"] > 30, "senior", "junior")
X = RNG.rand(40, 4)
Y = (X[:, 0] > 0.5).astype(int)


def zip_folder(folder: Path, archive: Path, *, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def make_zip(archive: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for name, content in members.items():
            out.writestr(zipfile.ZipInfo(name), content)
    return archive


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real MLflow model folders, saved once for the module (mlflow is slow to import)."""
    mlflow_sklearn = pytest.importorskip("mlflow.sklearn")
    from mlflow.models import infer_signature

    root = tmp_path_factory.mktemp("mlflow")
    pipeline = Pipeline(
        [
            (
                "columns",
                ColumnTransformer([("numbers", StandardScaler(), ["age", "income"]), ("city", OneHotEncoder(), ["city"])]),
            ),
            ("model", LogisticRegression()),
        ]
    ).fit(FRAME, LABELS)
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, Y)
    linear = LinearRegression().fit(X, X @ np.array([1.0, 2.0, 3.0, 4.0]))
    requirements = [f"scikit-learn=={sklearn.__version__}"]  # skips MLflow's slow requirement inference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow_sklearn.save_model(
            pipeline,
            root / "cloudpickle",
            serialization_format="cloudpickle",
            signature=infer_signature(FRAME, pipeline.predict(FRAME)),
            input_example=FRAME.head(3),
            pip_requirements=requirements,
        )
        mlflow_sklearn.save_model(
            forest,
            root / "skops",
            serialization_format="skops",
            signature=infer_signature(X, forest.predict(X)),
            input_example=X[:2],
            # MLflow re-loads the file to check it and wants the tree trusted; we ignore the list.
            skops_trusted_types=["sklearn.tree._tree.Tree"],
            pip_requirements=requirements,
        )
        mlflow_sklearn.save_model(linear, root / "pickle", serialization_format="pickle", pip_requirements=requirements)
        mlflow_sklearn.save_model(
            FunctionTransformer(func=eval),
            root / "skops_trusts_eval",
            serialization_format="skops",
            skops_trusted_types=["builtins.eval"],
            pip_requirements=requirements,
        )
    import mlflow

    return {
        "root": root,
        "pipeline": pipeline,
        "forest": forest,
        "linear": linear,
        "mlflow_version": mlflow.__version__,
    }


def test_cloudpickle_model_with_signature_and_example_is_read(saved: dict[str, Any], tmp_path: Path) -> None:
    archive = zip_folder(saved["root"] / "cloudpickle", tmp_path / "model.zip")
    model = extract_mlflow_archive(archive_path=archive, destination=tmp_path / "out")
    assert model.root == tmp_path / "out"
    assert model.model_path == (tmp_path / "out" / "model.pkl").resolve()
    assert model.serialization_format == "cloudpickle"
    assert model.sklearn_version == sklearn.__version__
    assert model.mlflow_version == saved["mlflow_version"]
    assert model.signature_inputs == [
        {"type": "double", "name": "age", "required": True},
        {"type": "double", "name": "income", "required": True},
        {"type": "string", "name": "city", "required": True},
    ]
    assert model.signature_outputs == [{"type": "tensor", "tensor-spec": {"dtype": "str", "shape": [-1]}}]
    assert model.input_kind == "columns"
    assert model.input_example == FRAME.head(3).to_dict("records")
    assert model.ignored == []
    loaded = load_model(model.root, fmt="mlflow")
    np.testing.assert_array_equal(loaded.predict(FRAME), saved["pipeline"].predict(FRAME))


def test_skops_model_with_tensor_signature_is_read(saved: dict[str, Any], tmp_path: Path) -> None:
    archive = zip_folder(saved["root"] / "skops", tmp_path / "model.zip")
    model = extract_mlflow_archive(archive_path=archive, destination=tmp_path / "out")
    assert model.serialization_format == "skops"
    assert model.model_path.name == "model.skops"
    assert model.signature_inputs == [{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}]
    assert model.input_kind == "tensor"
    assert model.input_example == X[:2].tolist()
    assert model.ignored == ["skops_trusted_types"]
    loaded = load_model(model.root, fmt="mlflow")
    np.testing.assert_array_equal(loaded.predict(X), saved["forest"].predict(X))


def test_pickle_model_without_signature_or_example_is_read(saved: dict[str, Any], tmp_path: Path) -> None:
    archive = zip_folder(saved["root"] / "pickle", tmp_path / "model.zip")
    model = extract_mlflow_archive(archive_path=archive, destination=tmp_path / "out")
    assert (model.serialization_format, model.signature_inputs, model.input_kind, model.input_example) == (
        "pickle",
        None,
        None,
        None,
    )
    np.testing.assert_array_equal(load_model(model.root, fmt="mlflow").predict(X), saved["linear"].predict(X))


def test_model_folder_inside_one_top_level_folder_is_found(saved: dict[str, Any], tmp_path: Path) -> None:
    archive = zip_folder(saved["root"] / "pickle", tmp_path / "model.zip", prefix="my-model/")
    model = extract_mlflow_archive(archive_path=archive, destination=tmp_path / "out")
    assert model.root == tmp_path / "out" / "my-model"
    assert model.serialization_format == "pickle"


def test_trusted_types_listed_in_mlmodel_are_ignored(saved: dict[str, Any], tmp_path: Path) -> None:
    archive = zip_folder(saved["root"] / "skops_trusts_eval", tmp_path / "model.zip")
    model = extract_mlflow_archive(archive_path=archive, destination=tmp_path / "out")
    assert model.ignored == ["skops_trusted_types"]
    with pytest.raises(UnsafeArtifact) as raised:
        load_model(model.root, fmt="mlflow")
    assert raised.value.refused_globals == ["builtins.eval"]


# --- hostile zips -----------------------------------------------------------------------------------


def _special_member(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so external_attr carries st_mode
    info.external_attr = mode << 16
    return info


def _zip_with_infos(archive: Path, infos: list[tuple[zipfile.ZipInfo, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about duplicate names
        with zipfile.ZipFile(archive, "w") as out:
            for info, content in infos:
                out.writestr(info, content)
    return archive


HOSTILE = [
    pytest.param("/etc/cron.d/evil", UnsafeArtifact, "Archive member '/etc/cron.d/evil' has an absolute path.", id="absolute"),
    pytest.param("C:\\evil.txt", UnsafeArtifact, "Archive member 'C:\\\\evil.txt' has an absolute path.", id="windows_drive"),
    pytest.param("../x", UnsafeArtifact, "Archive member '../x' points outside the archive with '..'.", id="dotdot"),
    pytest.param(
        "model/../../x",
        UnsafeArtifact,
        "Archive member 'model/../../x' points outside the archive with '..'.",
        id="nested_dotdot",
    ),
    pytest.param(
        "..\\x", UnsafeArtifact, "Archive member '..\\\\x' points outside the archive with '..'.", id="backslash_dotdot"
    ),
]


@pytest.mark.parametrize(("name", "error", "detail"), HOSTILE)
def test_path_tricks_are_refused_naming_the_member(tmp_path: Path, name: str, error: type[Exception], detail: str) -> None:
    members = [(zipfile.ZipInfo("MLmodel"), b"flavors: {}"), (zipfile.ZipInfo(name), b"x")]
    archive = _zip_with_infos(tmp_path / "evil.zip", members)
    with pytest.raises(error) as raised:
        extract_zip_safely(archive_path=archive, destination=tmp_path / "out")
    assert raised.value.detail == detail
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("mode", "detail"),
    [
        pytest.param(stat.S_IFLNK | 0o777, "Archive member 'model.pkl' is a symbolic link.", id="symlink"),
        pytest.param(stat.S_IFCHR | 0o666, "Archive member 'model.pkl' is a device or other special file.", id="char_device"),
        pytest.param(stat.S_IFIFO | 0o666, "Archive member 'model.pkl' is a device or other special file.", id="fifo"),
    ],
)
def test_links_and_devices_are_refused(tmp_path: Path, mode: int, detail: str) -> None:
    archive = _zip_with_infos(tmp_path / "evil.zip", [(_special_member("model.pkl", mode), b"/etc/passwd")])
    with pytest.raises(UnsafeArtifact) as raised:
        extract_zip_safely(archive_path=archive, destination=tmp_path / "out")
    assert raised.value.detail == detail
    assert not (tmp_path / "out" / "model.pkl").exists()


def test_too_many_members_is_payload_too_large(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for index in range(10_000):
            out.writestr(f"f{index}", b"")
    with pytest.raises(PayloadTooLarge) as raised:
        extract_zip_safely(archive_path=archive, destination=tmp_path / "out")
    assert raised.value.detail == "The archive has 10000 members; the limit is 1000."
    assert raised.value.as_problem()["limit"] == "max_members"


def _write_zeros_bomb(archive: Path, *, name: str, size: int) -> None:
    """A zip holding ``size`` zero bytes, written by streaming zlib: about 1 KiB per MiB on disk.

    Each 1 MiB chunk is compressed on its own (a full flush resets the window), so every
    chunk compresses to the same bytes and the file is written without holding the data.
    """
    chunk = bytes(MiB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty last block
    count = size // MiB
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    compressed_size = len(block) * count + len(final)
    encoded = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, compressed_size, size, len(encoded), 0)
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, compressed_size, size, len(encoded), 0, 0, 0, 0, 0, 0
    )
    with open(archive, "wb") as out:
        out.write(local + encoded)
        for _ in range(count):
            out.write(block)
        out.write(final)
        directory_offset = out.tell()
        out.write(central + encoded)
        out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(encoded), directory_offset, 0))


def test_one_gib_of_zeros_is_refused_before_extraction(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    _write_zeros_bomb(archive, name="model.pkl", size=1024 * MiB)
    assert archive.stat().st_size < 2 * MiB
    with zipfile.ZipFile(archive) as check:  # a real, readable zip
        assert check.infolist()[0].file_size == 1024 * MiB
    with pytest.raises(PayloadTooLarge) as raised:
        extract_zip_safely(archive_path=archive, destination=tmp_path / "out")
    assert raised.value.detail == "The archive expands to 1073741824 bytes; the limit is 512 MiB."
    assert raised.value.status == 413
    assert list((tmp_path / "out").iterdir()) == []


def test_compression_ratio_over_the_limit_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "ratio.zip"
    _write_zeros_bomb(archive, name="model.pkl", size=64 * MiB)
    with pytest.raises(PayloadTooLarge, match=r"^The archive expands \d+ times its compressed size; the limit is 100 times\.$"):
        extract_zip_safely(archive_path=archive, destination=tmp_path / "out")


def test_limits_are_configurable(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "small.zip", {"a": bytes(range(256)) * 8})
    with pytest.raises(PayloadTooLarge) as raised:
        extract_zip_safely(archive_path=archive, destination=tmp_path / "out", limits=ZipLimits(max_total_bytes=1000))
    assert raised.value.detail == "The archive expands to 2048 bytes; the limit is 1000 bytes."
    extract_zip_safely(archive_path=archive, destination=tmp_path / "ok", limits=ZipLimits(max_total_bytes=4096))
    assert (tmp_path / "ok" / "a").read_bytes() == bytes(range(256)) * 8


def test_member_larger_than_its_declared_size_is_refused(tmp_path: Path) -> None:
    """A central directory that lies about sizes passes the up-front checks, not the extraction."""
    archive = make_zip(tmp_path / "liar.zip", {"model.pkl": bytes(MiB)})
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        position = data.index(signature)
        data[position + offset : position + offset + 4] = struct.pack("<I", 1000)
    archive.write_bytes(bytes(data))
    with pytest.raises(InvalidArtifact, match="Bad CRC-32"):
        extract_zip_safely(archive_path=archive, destination=tmp_path / "out")
    assert (tmp_path / "out" / "model.pkl").stat().st_size <= 1000


def test_duplicate_members_are_refused(tmp_path: Path) -> None:
    archive = _zip_with_infos(tmp_path / "dup.zip", [(zipfile.ZipInfo("MLmodel"), b"a"), (zipfile.ZipInfo("./MLmodel"), b"b")])
    with pytest.raises(InvalidArtifact) as raised:
        extract_zip_safely(archive_path=archive, destination=tmp_path / "out")
    assert raised.value.detail == "Archive member './MLmodel' appears more than once."


def test_a_file_and_a_folder_with_one_name_are_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "clash.zip", {"model": b"file", "model/MLmodel": b"flavors: {}"})
    with pytest.raises(InvalidArtifact, match="Archive members conflict: 'model' is both a file and a folder."):
        extract_zip_safely(archive_path=archive, destination=tmp_path / "out")


def test_a_file_that_is_not_a_zip_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(InvalidArtifact, match="The archive is not a readable zip file: File is not a zip file"):
        extract_zip_safely(archive_path=path, destination=tmp_path / "out")


# --- hostile or broken MLmodel files ---------------------------------------------------------------

GOOD_FLAVOR = "flavors:\n  sklearn:\n    pickled_model: model.pkl\n    serialization_format: pickle\n"


@pytest.mark.parametrize(
    ("members", "error", "detail"),
    [
        pytest.param(
            {"model.pkl": b"x"},
            InvalidArtifact,
            "No MLmodel file at the archive's root or inside its single top-level folder.",
            id="no_mlmodel",
        ),
        pytest.param(
            {"a/MLmodel": GOOD_FLAVOR.encode(), "b/MLmodel": GOOD_FLAVOR.encode()},
            InvalidArtifact,
            "No MLmodel file at the archive's root or inside its single top-level folder.",
            id="two_model_folders",
        ),
        pytest.param(
            {"MLmodel": b"flavors:\n  python_function:\n    loader_module: my_code\n"},
            InvalidArtifact,
            "The MLmodel file has no sklearn flavor; only scikit-learn models are served.",
            id="no_sklearn_flavor",
        ),
        pytest.param(
            {"MLmodel": b"flavors:\n  sklearn:\n    pickled_model: ../../etc/passwd\n"},
            UnsafeArtifact,
            "The MLmodel file names '../../etc/passwd', outside the model folder.",
            id="model_path_outside",
        ),
        pytest.param(
            {
                "MLmodel": b"flavors:\n  sklearn:\n    pickled_model: model.pkl\n    serialization_format: dill\n",
                "model.pkl": b"x",
            },
            InvalidArtifact,
            "Unknown serialization_format 'dill'; expected one of cloudpickle, pickle, skops.",
            id="unknown_format",
        ),
        pytest.param(
            {"MLmodel": GOOD_FLAVOR.encode()},
            InvalidArtifact,
            "The model file 'model.pkl' named by MLmodel is not in the archive.",
            id="model_file_missing",
        ),
        pytest.param(
            {"MLmodel": GOOD_FLAVOR.encode() + b"signature:\n  inputs: '[{not json'\n", "model.pkl": b"x"},
            InvalidArtifact,
            "The MLmodel signature's inputs are not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 3 (char 2)",
            id="bad_signature",
        ),
    ],
)
def test_broken_mlmodel_is_refused(tmp_path: Path, members: dict[str, bytes], error: type[Exception], detail: str) -> None:
    archive = make_zip(tmp_path / "model.zip", members)
    with pytest.raises(error) as raised:
        extract_mlflow_archive(archive_path=archive, destination=tmp_path / "out")
    assert raised.value.detail == detail


def test_mlmodel_yaml_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "yaml-ran"
    mlmodel = f"flavors: !!python/object/apply:os.system ['touch {marker}']\n".encode()
    archive = make_zip(tmp_path / "model.zip", {"MLmodel": mlmodel})
    with pytest.raises(InvalidArtifact, match="The MLmodel file is not valid YAML"):
        extract_mlflow_archive(archive_path=archive, destination=tmp_path / "out")
    assert not marker.exists()


def test_read_mlflow_model_reads_a_records_input_example(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.pkl").write_bytes(b"x")
    (folder / "example.json").write_text('[{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]')
    (folder / "MLmodel").write_text(
        GOOD_FLAVOR + "saved_input_example_info:\n  artifact_path: example.json\n  type: dataframe\n  pandas_orient: records\n"
    )
    assert read_mlflow_model(folder=folder).input_example == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
