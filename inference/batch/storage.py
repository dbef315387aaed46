"""Where a job's files live: the model storage (local folder or S3), under `batch/` keys.

    batch/<org id>/<token>/input.<ext>         the upload, as sent (gzip kept)
    batch/<org id>/<token>/chunks/<n>.in       the records of chunk n, uncompressed, no header
    batch/<org id>/<token>/parts/<n>.out       chunk n scored: input records with predictions appended
    batch/<org id>/<token>/result.<csv|jsonl>  header and parts, in order

Parts and results are written once: on a local folder through a temporary file that is
hard-linked into place (first writer wins, readers never see half a file); on an object
store a PUT is atomic already, and an existing object is kept.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage

from registry.storage import model_storage

COPY_BLOCK = 1024 * 1024


def batch_storage() -> Storage:
    return model_storage()


def new_prefix(*, organization_id: int) -> str:
    return f"batch/{organization_id}/{uuid.uuid4().hex}"


def chunk_name(prefix: str, index: int) -> str:
    return f"{prefix}/chunks/{index:06d}.in"


def part_name(prefix: str, index: int) -> str:
    return f"{prefix}/parts/{index:06d}.out"


def result_name(prefix: str, input_format: str) -> str:
    return f"{prefix}/result.{input_format}"


def exists(name: str) -> bool:
    return batch_storage().exists(name)


def open_for_reading(name: str) -> BinaryIO:
    return batch_storage().open(name, "rb")


def read_bytes(name: str) -> bytes:
    with open_for_reading(name) as handle:
        return handle.read()


def write_once(name: str, write: Callable[[BinaryIO], None]) -> bool:
    """Write `name` through `write(handle)` unless it exists; True if this call wrote it.

    Readers see the whole file or nothing. Two concurrent writers of the same name must write
    the same bytes (every batch file is a pure function of the job's input), so either may win.
    """
    storage = batch_storage()
    if isinstance(storage, FileSystemStorage):
        path = Path(storage.path(name))
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, "wb") as handle:
                write(handle)
            try:
                os.link(temporary, path)  # fails if a twin task got there first: keep theirs
            except FileExistsError:
                return False
            except OSError:
                os.replace(temporary, path)  # a filesystem without hard links
                return True
            return True
        finally:
            temporary.unlink(missing_ok=True)
    if storage.exists(name):
        return False
    with tempfile.TemporaryFile() as handle:
        write(handle)
        handle.seek(0)
        saved = storage.save(name, File(handle, name=os.path.basename(name)))
    if saved != name:  # a twin task saved it meanwhile and the storage picked another name
        storage.delete(saved)
        return False
    return True


def write_bytes_once(name: str, data: bytes | Iterable[bytes]) -> bool:
    def write(handle: BinaryIO) -> None:
        if isinstance(data, (bytes, bytearray, memoryview)):
            handle.write(data)
        else:
            for piece in data:
                handle.write(piece)

    return write_once(name, write)


def copy_into(handle: BinaryIO, name: str) -> None:
    with open_for_reading(name) as source:
        shutil.copyfileobj(source, handle, COPY_BLOCK)


def delete(name: str) -> None:
    storage = batch_storage()
    if name and storage.exists(name):
        storage.delete(name)


def delete_folder(folder: str) -> None:
    """Remove every file under `folder` (chunk inputs, parts); missing folders are fine."""
    storage = batch_storage()
    if isinstance(storage, FileSystemStorage):
        shutil.rmtree(storage.path(folder), ignore_errors=True)
        return
    try:
        _, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for filename in files:
        storage.delete(f"{folder}/{filename}")


def size(name: str) -> int:
    return batch_storage().size(name)
