"""MLflow model folders uploaded as a zip: check, extract, and read their MLmodel.

Every member is checked before one byte is written: no absolute paths, no ``..``, no
links, devices or other special files, no encrypted or duplicate members, and bounded
member count, total size and compression ratio (a zip bomb is refused from its central
directory, then again while streaming, in case the directory lies). The MLmodel file
is parsed with ``yaml.safe_load``; any list of "trusted types" it carries is ignored:
types are trusted by our allow-list, never by the upload.
"""

from __future__ import annotations

import json
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from platform_site.errors import InvalidArtifact, PayloadTooLarge, UnsafeArtifact

MiB = 1024 * 1024
DEFAULT_MAX_MEMBERS = 1000
DEFAULT_MAX_TOTAL_BYTES = 512 * MiB
DEFAULT_MAX_RATIO = 100.0
# MLmodel and input examples are read whole; a few MiB is far above any real one.
_MAX_METADATA_BYTES = 5 * MiB
_COPY_CHUNK = MiB
_SERIALIZATION_FORMATS = ("cloudpickle", "pickle", "skops")
# macOS Finder adds this folder of resource forks to every zip it makes.
_IGNORED_TOP_LEVEL = frozenset({"__MACOSX"})


@dataclass(frozen=True)
class ZipLimits:
    """Bounds on a zip's central directory; defaults suit MLflow model folders."""

    max_members: int = DEFAULT_MAX_MEMBERS
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO


@dataclass(frozen=True)
class MlflowModel:
    """What an MLflow sklearn model folder holds, read from its MLmodel file.

    ``input_example`` is a list of rows: dicts (column name -> value) for a dataframe
    example, lists for an ndarray example. ``signature_inputs`` is the parsed
    ``signature.inputs`` JSON; ``input_kind`` is "columns", "tensor" or None.
    """

    root: Path
    model_path: Path
    serialization_format: str
    sklearn_version: str | None
    mlflow_version: str | None
    signature_inputs: list[dict[str, Any]] | None
    signature_outputs: list[dict[str, Any]] | None
    input_kind: str | None
    input_example: list[dict[str, Any]] | list[list[Any]] | None
    ignored: list[str] = field(default_factory=list)


def check_zip_members(archive: zipfile.ZipFile, *, limits: ZipLimits = ZipLimits()) -> list[zipfile.ZipInfo]:
    """Return the archive's members after checking each one and the totals against ``limits``.

    Raises PayloadTooLarge naming the limit a zip bomb breaks, UnsafeArtifact naming a
    member with a path trick or a link/device, InvalidArtifact naming an encrypted or
    duplicate member.
    """
    members = archive.infolist()
    if len(members) > limits.max_members:
        raise PayloadTooLarge(f"The archive has {len(members)} members; the limit is {limits.max_members}.", limit="max_members")
    seen: set[str] = set()
    total_size = 0
    total_compressed = 0
    for info in members:
        parts = _member_parts(info.filename)
        _check_member_type(info)
        if info.flag_bits & 0x1:
            raise InvalidArtifact(f"Archive member {info.filename!r} is encrypted.")
        key = "/".join(parts)
        if key in seen:
            raise InvalidArtifact(f"Archive member {info.filename!r} appears more than once.")
        seen.add(key)
        total_size += info.file_size
        total_compressed += info.compress_size
    if total_size > limits.max_total_bytes:
        raise PayloadTooLarge(
            f"The archive expands to {total_size} bytes; the limit is {_format_bytes(limits.max_total_bytes)}.",
            limit="max_total_bytes",
        )
    ratio = total_size / max(total_compressed, 1)
    if ratio > limits.max_ratio:
        raise PayloadTooLarge(
            f"The archive expands {ratio:.0f} times its compressed size; the limit is {limits.max_ratio:g} times.",
            limit="max_ratio",
        )
    return members


def extract_zip_safely(*, archive_path: str | Path, destination: str | Path, limits: ZipLimits = ZipLimits()) -> Path:
    """Check every member, then extract the archive into ``destination`` (created if missing).

    Returns the destination. Files are written with fresh permissions (no modes from the
    zip); a member that expands past its declared size, or past the total limit, stops
    the extraction with PayloadTooLarge.
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    try:
        with zipfile.ZipFile(archive_path) as archive:
            members = check_zip_members(archive, limits=limits)
            written = 0
            for info in members:
                target = root.joinpath(*_member_parts(info.filename))
                if root not in target.parents and target != root:
                    raise UnsafeArtifact(f"Archive member {info.filename!r} would be written outside the folder.")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = _copy_member(archive, info, target, written=written, limits=limits)
    except (zipfile.BadZipFile, NotImplementedError, EOFError) as exc:
        raise InvalidArtifact(f"The archive is not a readable zip file: {exc}") from exc
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        name = Path(exc.filename or "").name
        raise InvalidArtifact(f"Archive members conflict: {name!r} is both a file and a folder.") from exc
    return destination


def extract_mlflow_archive(*, archive_path: str | Path, destination: str | Path, limits: ZipLimits = ZipLimits()) -> MlflowModel:
    """Extract an MLflow model zip safely into ``destination`` and return its MLmodel's content."""
    extract_zip_safely(archive_path=archive_path, destination=destination, limits=limits)
    return read_mlflow_model(folder=destination)


def read_mlflow_model(*, folder: str | Path) -> MlflowModel:
    """Read an extracted MLflow sklearn model folder (MLmodel at its root or in its one sub-folder).

    Raises InvalidArtifact when there is no MLmodel, no sklearn flavor, an unknown
    serialization format, a model path outside the folder, or an unreadable signature
    or input example.
    """
    root = _find_model_root(Path(folder))
    mlmodel = _read_yaml(root / "MLmodel")
    flavors = mlmodel.get("flavors")
    sklearn_flavor = flavors.get("sklearn") if isinstance(flavors, dict) else None
    if not isinstance(sklearn_flavor, dict):
        raise InvalidArtifact("The MLmodel file has no sklearn flavor; only scikit-learn models are served.")
    pickled_model = sklearn_flavor.get("pickled_model")
    if not isinstance(pickled_model, str) or not pickled_model:
        raise InvalidArtifact("The MLmodel file's sklearn flavor names no pickled_model.")
    model_path = _inside(root, pickled_model)
    if not model_path.is_file():
        raise InvalidArtifact(f"The model file {pickled_model!r} named by MLmodel is not in the archive.")
    # MLflow itself defaults to pickle when the key is missing (models saved before it existed).
    serialization_format = sklearn_flavor.get("serialization_format") or "pickle"
    if serialization_format not in _SERIALIZATION_FORMATS:
        raise InvalidArtifact(
            f"Unknown serialization_format {serialization_format!r}; expected one of {', '.join(_SERIALIZATION_FORMATS)}."
        )
    ignored = [key for key in ("skops_trusted_types", "code") if sklearn_flavor.get(key)]
    signature = mlmodel.get("signature") if isinstance(mlmodel.get("signature"), dict) else {}
    inputs = _parse_signature_part(signature.get("inputs"), part="inputs")
    outputs = _parse_signature_part(signature.get("outputs"), part="outputs")
    return MlflowModel(
        root=root,
        model_path=model_path,
        serialization_format=serialization_format,
        sklearn_version=_optional_str(sklearn_flavor.get("sklearn_version")),
        mlflow_version=_optional_str(mlmodel.get("mlflow_version")),
        signature_inputs=inputs,
        signature_outputs=outputs,
        input_kind=_input_kind(inputs),
        input_example=_read_input_example(root, mlmodel.get("saved_input_example_info")),
        ignored=ignored,
    )


# --- member checks -------------------------------------------------------------------------


def _member_parts(name: str) -> list[str]:
    """Return the path components of a member name, refusing absolute paths and ``..``."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise UnsafeArtifact(f"Archive member {name!r} has an absolute path.")
    parts = [part for part in normalized.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArtifact(f"Archive member {name!r} points outside the archive with '..'.")
    if not parts:
        raise InvalidArtifact(f"Archive member {name!r} has an empty name.")
    return parts


def _check_member_type(info: zipfile.ZipInfo) -> None:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == 0 or kind in (stat.S_IFREG, stat.S_IFDIR):
        return  # zips made on Windows carry no Unix mode at all
    what = "a symbolic link" if kind == stat.S_IFLNK else "a device or other special file"
    raise UnsafeArtifact(f"Archive member {info.filename!r} is {what}.")


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, *, written: int, limits: ZipLimits) -> int:
    member_written = 0
    with archive.open(info) as source, open(target, "xb") as sink:
        while chunk := source.read(_COPY_CHUNK):
            member_written += len(chunk)
            written += len(chunk)
            if member_written > info.file_size or written > limits.max_total_bytes:
                raise PayloadTooLarge(
                    f"Archive member {info.filename!r} expands past its declared size or the "
                    f"{_format_bytes(limits.max_total_bytes)} limit.",
                    limit="max_total_bytes",
                )
            sink.write(chunk)
    return written


def _format_bytes(size: int) -> str:
    return f"{size / MiB:g} MiB" if size >= MiB else f"{size} bytes"


# --- MLmodel ----------------------------------------------------------------------------------


def _find_model_root(folder: Path) -> Path:
    if (folder / "MLmodel").is_file():
        return folder
    entries = [entry for entry in folder.iterdir() if entry.name not in _IGNORED_TOP_LEVEL]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "MLmodel").is_file():
        return entries[0]
    raise InvalidArtifact("No MLmodel file at the archive's root or inside its single top-level folder.")


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if root.resolve() not in path.parents:
        raise UnsafeArtifact(f"The MLmodel file names {relative!r}, outside the model folder.")
    return path


def _read_small(path: Path) -> bytes:
    if path.stat().st_size > _MAX_METADATA_BYTES:
        raise PayloadTooLarge(f"{path.name} is larger than {_format_bytes(_MAX_METADATA_BYTES)}.")
    return path.read_bytes()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(_read_small(path))
    except yaml.YAMLError as exc:
        raise InvalidArtifact(f"The MLmodel file is not valid YAML: {exc}") from exc
    if not isinstance(content, dict):
        raise InvalidArtifact("The MLmodel file is not a YAML mapping.")
    return content


def _parse_signature_part(raw: Any, *, part: str) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise InvalidArtifact(f"The MLmodel signature's {part} are not valid JSON: {exc}") from exc
    if not isinstance(parsed, list) or not all(isinstance(spec, dict) and "type" in spec for spec in parsed):
        raise InvalidArtifact(f"The MLmodel signature's {part} are not a list of column or tensor specs.")
    return parsed


def _input_kind(inputs: list[dict[str, Any]] | None) -> str | None:
    if not inputs:
        return None
    if all(spec.get("type") == "tensor" for spec in inputs):
        return "tensor"
    if any(spec.get("type") == "tensor" for spec in inputs):
        raise InvalidArtifact("The MLmodel signature mixes tensor and column inputs.")
    return "columns"


def _read_input_example(root: Path, info: Any) -> list[dict[str, Any]] | list[list[Any]] | None:
    if not isinstance(info, dict) or not isinstance(info.get("artifact_path"), str):
        return None
    path = _inside(root, info["artifact_path"])
    if not path.is_file():
        raise InvalidArtifact(f"The input example {info['artifact_path']!r} named by MLmodel is not in the archive.")
    try:
        example = json.loads(_read_small(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArtifact(f"The input example is not valid JSON: {exc}") from exc
    kind = info.get("type")
    if kind == "dataframe":
        return _dataframe_rows(example, orient=info.get("pandas_orient", "split"))
    if kind == "ndarray":
        if isinstance(example, dict) and "inputs" in example:
            example = example["inputs"]
        if isinstance(example, list) and example and not isinstance(example[0], list):
            example = [example]  # a 1-D example is one row
        if not isinstance(example, list) or not all(isinstance(row, list) for row in example):
            raise InvalidArtifact("The ndarray input example is not a list of rows.")
        return example
    raise InvalidArtifact(f"Unsupported input example type {kind!r}; expected dataframe or ndarray.")


def _dataframe_rows(example: Any, *, orient: str) -> list[dict[str, Any]]:
    if orient == "split" and isinstance(example, dict):
        columns, data = example.get("columns"), example.get("data")
        if isinstance(columns, list) and isinstance(data, list) and all(isinstance(row, list) for row in data):
            if all(len(row) == len(columns) for row in data):
                return [dict(zip(columns, row, strict=True)) for row in data]
    if orient == "records" and isinstance(example, list) and all(isinstance(row, dict) for row in example):
        return example
    raise InvalidArtifact(f"The dataframe input example does not match its pandas_orient {orient!r}.")


def _optional_str(value: Any) -> str | None:
    return str(value) if value is not None else None
