"""Artifacts on their way in (staging, sandbox check, storage) and out (the serving artifact
a runner is sent).

An upload is copied to a temporary file while its sha256 is computed; its format is
detected from the name and the first bytes; MLflow zips are unpacked through the safe
archive checks. The sandbox check runs in a child process with memory and time limits (forked by
the runner host's fork server, else a new process), so a model that explodes on load takes down
the child, never the web process. The sandbox also writes the serving artifact
(registry.loaders.serving); nothing here loads a tenant's model.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.uploadedfile import UploadedFile

from platform_site.errors import FeatureNotConfigured, InvalidArtifact, InvalidInput, PayloadTooLarge, ServiceUnavailable
from registry import loaders
from registry.storage import model_storage

CHUNK = 1024 * 1024
EXTENSIONS = {"joblib": "joblib", "pickle": "pkl", "skops": "skops", "mlflow": "zip"}


@dataclass
class StagedArtifact:
    path: Path
    sha256: str
    size: int
    format: str
    extension: str
    # Where the estimator file is and how it is serialized (itself, or inside an MLflow zip).
    model_path: Path
    inner_format: str
    inner_path: str = ""
    mlflow_signature: list[dict] | None = None
    input_example: Any = None
    workdir: Path | None = None


@dataclass
class ReferenceData:
    path: Path
    columns: list[str]
    dtypes: list[str]
    rows: int
    head_records: list[dict]
    workdir: Path = field(repr=False, default=None)

    def cleanup(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _copy_with_hash(file, target: Path, *, limit: int, field_name: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    file.seek(0)
    with open(target, "wb") as out:
        for chunk in iter(lambda: file.read(CHUNK), b""):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"{field_name} is larger than the limit of {limit // (1024 * 1024)} MiB.",
                    errors=[{"field": field_name, "message": f"larger than {limit} bytes"}],
                )
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


@contextlib.contextmanager
def staged_upload(file: UploadedFile) -> Iterator[StagedArtifact]:
    workdir = Path(tempfile.mkdtemp(prefix="mh-upload-"))
    try:
        raw = workdir / "artifact"
        sha256, size = _copy_with_hash(file, raw, limit=settings.MAX_UPLOAD_BYTES, field_name="file")
        if size == 0:
            raise InvalidInput("The uploaded file is empty.", errors=[{"field": "file", "message": "empty file"}])
        with open(raw, "rb") as handle:
            head = handle.read(512)
        fmt = loaders.detect_format(filename=getattr(file, "name", "") or "", first_bytes=head)
        staged = StagedArtifact(
            path=raw,
            sha256=sha256,
            size=size,
            format=fmt,
            extension=EXTENSIONS[fmt],
            model_path=raw,
            inner_format=fmt,
            workdir=workdir,
        )
        if fmt == "mlflow":
            info = loaders.extract_mlflow_archive(archive_path=raw, destination=workdir / "mlflow")
            # The safe loader reads the extracted folder (MLmodel names the estimator file).
            staged.model_path = info.root
            staged.inner_path = str(info.model_path.relative_to(info.root))
            staged.inner_format = info.serialization_format
            staged.mlflow_signature = info.signature_inputs
            staged.input_example = info.input_example
        yield staged
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def read_reference_data(file: UploadedFile) -> ReferenceData:
    import pandas as pd

    workdir = Path(tempfile.mkdtemp(prefix="mh-reference-"))
    path = workdir / "reference.csv"
    try:
        _copy_with_hash(file, path, limit=settings.MAX_REFERENCE_BYTES, field_name="reference_data")
        try:
            frame = pd.read_csv(path)
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise InvalidInput(
                f"reference_data is not a readable CSV with a header: {exc}",
                errors=[{"field": "reference_data", "message": "not a CSV with a header"}],
            ) from None
        if frame.empty:
            raise InvalidInput("reference_data has no rows.", errors=[{"field": "reference_data", "message": "no rows"}])
        head = [
            {str(k): (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.head(5).to_dict(orient="records")
        ]
        head = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in head]
        return ReferenceData(
            path=path,
            columns=[str(c) for c in frame.columns],
            dtypes=[str(t) for t in frame.dtypes],
            rows=len(frame),
            head_records=head,
            workdir=workdir,
        )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def inspect_in_sandbox(staged: StagedArtifact, *, input_example: Any) -> dict:
    """Load and try the model in a child process with limits; returns what it found.

    Includes ``serving_artifact`` (bytes, see ``registry.loaders.serving``) and
    ``linear_spec`` (dict or None).
    """
    rows = None
    if input_example is not None:
        from registry.signatures import example_rows

        names, values = example_rows(input_example)
        rows = [dict(zip(names, row, strict=True)) for row in values] if names else values
    report = loaders.inspect_artifact(
        str(staged.model_path),
        fmt=staged.format,
        input_example=rows,
        timeout_s=settings.MODEL_CHECK_TIMEOUT_SECONDS,
        memory_mb=settings.MODEL_CHECK_MEMORY_MB,
        check_socket=settings.MODEL_CHECK_SOCKET,
    )
    described = report["description"]
    return {
        **described,
        "sklearn_version": described.get("saved_sklearn_version"),
        "serving_sklearn_version": described["running_sklearn_version"],
        "load_seconds": report.get("load_seconds"),
        "sample": report.get("sample"),
        # The platform-owned artifact runners load (bytes) and, for plain linear models, its numbers.
        "serving_artifact": report["serving_artifact"],
        "linear_spec": report["linear_spec"],
        # A tree ensemble's verified compiled form (bytes or None), why, and the check's figures.
        "compiled_artifact": report.get("compiled_artifact"),
        "compiled_reason": (report.get("compiled") or {}).get("reason", ""),
        "compiled_figures": (report.get("compiled") or {}).get("figures") or {},
    }


def store(local_path: Path, name: str) -> str:
    """Save a local file to model storage under `name`; returns the stored name."""
    storage = model_storage()
    with open(local_path, "rb") as handle:
        return storage.save(name, File(handle, name=Path(name).name))


def delete_stored(name: str) -> None:
    try:
        model_storage().delete(name)
    except OSError:
        pass


# --- serving side -------------------------------------------------------------------------

_local_lock = threading.Lock()


def local_copy(version) -> Path:
    """A local path to the version's estimator file, downloading and unpacking once per host."""
    cache_root = Path(settings.ARTIFACT_CACHE_DIR) / version.sha256
    storage = model_storage()
    with _local_lock:
        if version.format == "mlflow":
            target = cache_root / "mlflow"
            marker = cache_root / ".complete"
            if not marker.exists():
                cache_root.mkdir(parents=True, exist_ok=True)
                archive = _local_file(storage, version.artifact.name, cache_root / "artifact.zip")
                shutil.rmtree(target, ignore_errors=True)
                loaders.extract_mlflow_archive(archive_path=archive, destination=target)
                marker.touch()
            return target
        return _local_file(storage, version.artifact.name, cache_root / f"artifact.{EXTENSIONS[version.format]}")


def _local_file(storage, name: str, target: Path) -> Path:
    try:
        return Path(storage.path(name))
    except NotImplementedError:  # remote storage: fetch a copy once
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            with storage.open(name, "rb") as source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
            partial.replace(target)
        return target


@contextlib.contextmanager
def download_mlflow_model(model_uri: str) -> Iterator[UploadedFile]:
    """Fetch `models:/…` or `runs:/…` from MLFLOW_TRACKING_URI and present it as a zip upload."""
    if not settings.MLFLOW_TRACKING_URI:
        raise FeatureNotConfigured(
            "Importing from MLflow is off: no MLflow tracking server is configured. An operator enables it by setting "
            "MLFLOW_TRACKING_URI to the tracking server's address (for example http://mlflow.internal:5000) and restarting "
            "the web processes; until then, upload the MLflow model folder as a .zip to .../versions.",
            feature="mlflow_import",
            setting="MLFLOW_TRACKING_URI",
        )
    if not (model_uri.startswith("models:/") or model_uri.startswith("runs:/")):
        raise InvalidInput(
            f"'{model_uri}' is not an MLflow model URI; use models:/<name>/<version>, models:/<name>@<alias> or "
            "runs:/<run_id>/<path>.",
            errors=[{"field": "model_uri", "message": "expected models:/… or runs:/…"}],
        )
    import mlflow
    from mlflow.exceptions import MlflowException

    workdir = Path(tempfile.mkdtemp(prefix="mh-mlflow-"))
    try:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=str(workdir / "download"), tracking_uri=settings.MLFLOW_TRACKING_URI
            )
        except MlflowException as exc:
            raise InvalidInput(
                f"MLflow could not resolve {model_uri}: {exc.message}",
                errors=[{"field": "model_uri", "message": "not found on the tracking server"}],
            ) from None
        except OSError as exc:
            raise ServiceUnavailable(f"The MLflow tracking server is unreachable: {exc}") from None
        archive = workdir / "model.zip"
        root = Path(local)
        if not (root / "MLmodel").exists():
            raise InvalidArtifact(f"{model_uri} is not an MLflow model folder (no MLmodel file).")
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
            for path in sorted(root.rglob("*")):
                if path.is_symlink():
                    raise InvalidArtifact(f"{model_uri} contains a link ({path.name}); links are refused.")
                if path.is_file():
                    out.write(path, path.relative_to(root).as_posix())
        with open(archive, "rb") as handle:
            yield UploadedFile(handle, name="model.zip", content_type="application/zip", size=archive.stat().st_size)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def store_bytes(data: bytes, name: str) -> str:
    """Save platform-written bytes to model storage under `name`; returns the stored name."""
    from django.core.files.base import ContentFile

    return model_storage().save(name, ContentFile(data, name=Path(name).name))


def _version_folder(version) -> str:
    return f"orgs/{version.registered_model.organization_id}/models/{version.registered_model_id}/versions/{version.number}"


def serving_artifact_name(version) -> str:
    return f"{_version_folder(version)}/serving-{version.sha256[:16]}.pkl"


def compiled_artifact_name(version) -> str:
    return f"{_version_folder(version)}/compiled-{version.sha256[:16]}.onnx"


def compiled_fields(version, *, data: bytes | None, reason: str, figures: dict) -> dict:
    """The version's compiled_* fields for a compiled artifact (stored now) or its absence."""
    if data is None:
        return {"compiled_artifact": "", "compiled_sha256": "", "compiled_reason": reason[:500], "compiled_figures": figures}
    return {
        "compiled_artifact": store_bytes(data, compiled_artifact_name(version)),
        "compiled_sha256": hashlib.sha256(data).hexdigest(),
        "compiled_reason": reason[:500],
        "compiled_figures": figures,
    }


def build_serving_artifact(version) -> None:
    """Check a stored version's original file in the sandbox again and store what serves it
    (and its compiled form, when it has one).

    For versions uploaded before serving artifacts existed, and for ``manage.py
    reverify_compiled --rebuild``; new uploads get theirs at upload.
    """
    from registry.models import ModelVersion

    path = local_copy(version)
    report = loaders.inspect_artifact(
        str(path),
        fmt=version.format,
        input_example=None,
        timeout_s=settings.MODEL_CHECK_TIMEOUT_SECONDS,
        memory_mb=settings.MODEL_CHECK_MEMORY_MB,
        check_socket=settings.MODEL_CHECK_SOCKET,
    )
    data = report["serving_artifact"]
    name = store_bytes(data, serving_artifact_name(version))
    ModelVersion.objects.filter(id=version.id).update(
        serving_artifact=name,
        serving_sha256=hashlib.sha256(data).hexdigest(),
        serving_size_bytes=len(data),
        linear_spec=report.get("linear_spec"),
        **compiled_fields(
            version,
            data=report.get("compiled_artifact"),
            reason=(report.get("compiled") or {}).get("reason", ""),
            figures=(report.get("compiled") or {}).get("figures") or {},
        ),
    )


def read_serving_artifact(*, version_id: int) -> tuple[bytes, str]:
    """The platform-written artifact a runner loads for a version (built now if it has none),
    and its sha256."""
    from registry.models import ModelVersion

    version = ModelVersion.objects.select_related("registered_model").get(id=version_id)
    if not version.serving_artifact:
        build_serving_artifact(version)
        version.refresh_from_db()
    with model_storage().open(version.serving_artifact.name, "rb") as handle:
        data = handle.read()
    return data, hashlib.sha256(data).hexdigest()


def read_compiled_artifact(*, version_id: int) -> tuple[bytes, str]:
    """A version's compiled artifact (the runner loads it beside the serving artifact) and its
    sha256 as computed now; the caller compares it with the one recorded."""
    from registry.models import ModelVersion

    version = ModelVersion.objects.get(id=version_id)
    with model_storage().open(version.compiled_artifact.name, "rb") as handle:
        data = handle.read()
    return data, hashlib.sha256(data).hexdigest()


def recheck_compiled(version) -> dict:
    """Run the sandbox's conversion and verification again on a stored version, with the
    runtime installed now, and store what it found.

    Returns ``{"passed", "reason", "changed"}``: ``changed`` when the new compiled bytes differ
    from the stored ones (a new converter; the new, verified ones are stored). A version whose
    check no longer passes loses its compiled form and is served by scikit-learn.
    """
    from registry.models import ModelVersion

    report = loaders.inspect_artifact(
        str(local_copy(version)),
        fmt=version.format,
        input_example=None,
        timeout_s=settings.MODEL_CHECK_TIMEOUT_SECONDS,
        memory_mb=settings.MODEL_CHECK_MEMORY_MB,
        check_socket=settings.MODEL_CHECK_SOCKET,
    )
    data = report.get("compiled_artifact")
    found = report.get("compiled") or {}
    sha256 = hashlib.sha256(data).hexdigest() if data else ""
    changed = sha256 != version.compiled_sha256
    if changed:
        ModelVersion.objects.filter(id=version.id).update(
            **compiled_fields(version, data=data, reason=found.get("reason", ""), figures=found.get("figures") or {})
        )
    return {"passed": data is not None, "reason": found.get("reason", ""), "changed": changed}
