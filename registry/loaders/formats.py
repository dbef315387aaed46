"""One entry point per job: which format a file is, and loading it through its safe loader."""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platform_site.errors import InvalidArtifact

FORMATS = ("joblib", "pickle", "skops", "mlflow")

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# joblib's compressors (joblib/compressor.py), checked before pickle's opcodes.
_COMPRESSED_MAGICS = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x5d\x00\x00", b"\x04\x22\x4d\x18", b"ZF")
_PICKLE_EXTENSIONS = (".pkl", ".pickle", ".pckl")
_JOBLIB_EXTENSIONS = (".joblib", ".jbl", ".z", ".gz", ".bz2", ".xz", ".lzma", ".lz4")
# Opcodes a protocol 0/1 pickle can start with: MARK, GLOBAL, EMPTY_DICT/LIST/TUPLE, NONE, INT...
_PROTOCOL_0_FIRST_BYTES = frozenset(b"(c}])NIFLSVUTGJKMXh")


@dataclass(frozen=True)
class LoadedArtifact:
    """A model loaded through the safe path, with what the artifact said about itself."""

    estimator: Any
    fmt: str
    saved_sklearn_version: str | None


def load_model(path: str | Path, *, fmt: str) -> Any:
    """Return the estimator in ``path`` loaded through the safe path for ``fmt``.

    ``fmt`` is one of joblib, pickle, skops, mlflow (then ``path`` is the extracted
    folder). Raises UnsafeArtifact, InvalidArtifact or PayloadTooLarge; never runs code
    the allow-list does not name.
    """
    return load_artifact(path, fmt=fmt).estimator


def load_artifact(path: str | Path, *, fmt: str) -> LoadedArtifact:
    """Like ``load_model``, also returning the scikit-learn version the artifact was saved with.

    Every loaded model also passes ``structure.check_model_structures``: the allow-list
    stops code, that check stops trees whose indices point outside their arrays.
    """
    from .structure import check_model_structures

    loaded = _load_unchecked(path, fmt=fmt)
    check_model_structures(model=loaded.estimator)
    return loaded


def load_artifact_from_fd(fd: int, *, fmt: str, fallback_sklearn_version: str | None) -> LoadedArtifact:
    """Like ``load_artifact``, for one estimator file (joblib, pickle or skops) open as `fd`.

    What the fork server's check reads: the descriptor the web opened, never a path. For a
    file from an MLflow folder, ``fallback_sklearn_version`` is the version its MLmodel names.
    The caller keeps `fd` open.
    """
    from .structure import check_model_structures

    if fmt in ("joblib", "pickle"):
        loaded = _load_pickled(fd, fmt=fmt, fallback_version=fallback_sklearn_version)
    elif fmt == "skops":
        with open(fd, "rb", closefd=False) as handle:
            handle.seek(0)
            loaded = _load_skops(handle.read(), fallback_version=fallback_sklearn_version)
    else:
        raise InvalidArtifact(f"Unknown estimator file format {fmt!r}; expected joblib, pickle or skops.")
    check_model_structures(model=loaded.estimator)
    return loaded


def _load_unchecked(path: str | Path, *, fmt: str) -> LoadedArtifact:
    if fmt in ("joblib", "pickle"):
        return _load_pickled(path, fmt=fmt, fallback_version=None)
    if fmt == "skops":
        return _load_skops(path, fallback_version=None)
    if fmt == "mlflow":
        from .archive import read_mlflow_model

        model = read_mlflow_model(folder=path)
        if model.serialization_format == "skops":
            return _load_skops(model.model_path, fallback_version=model.sklearn_version)
        return _load_pickled(model.model_path, fmt=model.serialization_format, fallback_version=model.sklearn_version)
    raise InvalidArtifact(f"Unknown model format {fmt!r}; expected one of {', '.join(FORMATS)}.")


def _load_pickled(path: str | Path | int, *, fmt: str, fallback_version: str | None) -> LoadedArtifact:
    from .safe_pickle import load_pickle

    loaded = load_pickle(source=path if isinstance(path, int) else Path(path))
    versions = loaded.audit.sklearn_versions
    return LoadedArtifact(estimator=loaded.obj, fmt=fmt, saved_sklearn_version=versions[0] if versions else fallback_version)


def _load_skops(path: str | Path | bytes, *, fallback_version: str | None) -> LoadedArtifact:
    from .skops_format import load_skops

    loaded = load_skops(path=path)
    versions = loaded.sklearn_versions
    return LoadedArtifact(estimator=loaded.obj, fmt="skops", saved_sklearn_version=versions[0] if versions else fallback_version)


def detect_format(*, filename: str, first_bytes: bytes) -> str:
    """Return joblib, pickle, skops or mlflow for an upload, from its magic number and extension.

    Pass as many leading bytes as is cheap (the whole file when small): a zip is told
    apart (skops has ``schema.json``, MLflow an ``MLmodel``) from its members when the
    bytes hold them, else from the extension (.skops, .zip). Raises InvalidArtifact for
    anything else.
    """
    name = filename.lower()
    if first_bytes.startswith(_ZIP_MAGICS):
        return _detect_zip_format(name, first_bytes)
    if first_bytes.startswith(_COMPRESSED_MAGICS) or _is_zlib_header(first_bytes):
        return "joblib"
    is_binary_pickle = len(first_bytes) >= 2 and first_bytes[0] == 0x80 and 2 <= first_bytes[1] <= 5
    if is_binary_pickle or (first_bytes and first_bytes[0] in _PROTOCOL_0_FIRST_BYTES):
        if name.endswith(_JOBLIB_EXTENSIONS) or b"NumpyArrayWrapper" in first_bytes:
            return "joblib"
        if is_binary_pickle or name.endswith(_PICKLE_EXTENSIONS):
            return "pickle"
    raise InvalidArtifact(
        f"{filename!r} is not a recognised model file: expected a pickle, a joblib file, a skops file or an MLflow zip."
    )


def _is_zlib_header(data: bytes) -> bool:
    # joblib's zlib files start with a zlib header: 0x78, and (CMF * 256 + FLG) % 31 == 0.
    return len(data) >= 2 and data[0] == 0x78 and (data[0] * 256 + data[1]) % 31 == 0


def _detect_zip_format(name: str, first_bytes: bytes) -> str:
    members = _zip_member_names(first_bytes)
    if "schema.json" in members and "MLmodel" not in members:
        return "skops"
    if any(member == "MLmodel" or member.endswith("/MLmodel") for member in members):
        return "mlflow"
    if name.endswith(".skops"):
        return "skops"
    if name.endswith(".zip"):
        return "mlflow"
    raise InvalidArtifact(f"{name!r} is a zip, but neither a skops file (.skops) nor an MLflow model folder (.zip).")


def _zip_member_names(data: bytes) -> list[str]:
    """Return member names from the central directory, or from local headers in a prefix."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.namelist()
    except zipfile.BadZipFile:
        pass
    names, offset = [], 0
    while data.startswith(b"PK\x03\x04", offset) and offset + 30 <= len(data):
        flags, _, _, _, _, compressed, _, name_length, extra_length = struct.unpack_from("<HHHHIIIHH", data, offset + 6)
        names.append(data[offset + 30 : offset + 30 + name_length].decode("utf-8", "replace"))
        if flags & 0x08:  # sizes follow the data: the next header cannot be found from here
            break
        offset += 30 + name_length + extra_length + compressed
    return names
