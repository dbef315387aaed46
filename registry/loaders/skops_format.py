"""skops files: skops' own audit of untrusted types, judged by our allow-list.

skops refuses to build any type outside its default trusted set unless the caller
trusts it. We ask skops which types it would refuse (``get_untrusted_types``), check each
against the same policy as pickles (``allowlist.is_allowed_type_name``), refuse the
file naming any that fail, and trust exactly the audited rest. The list of trusted
types always comes from this audit, never from the upload (e.g. MLflow's MLmodel
``skops_trusted_types``).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platform_site.errors import InvalidArtifact, ModelhostError, UnsafeArtifact

from .allowlist import is_allowed_type_name
from .archive import ZipLimits, check_zip_members


@dataclass(frozen=True)
class LoadedSkops:
    """The object a skops file held, the types we trusted for it, and its saved sklearn versions."""

    obj: Any
    trusted_types: tuple[str, ...]
    sklearn_versions: tuple[str, ...]


SkopsSource = str | Path | bytes  # a path, or the file's bytes


def _zip_file(path: SkopsSource) -> str | Path | io.BytesIO:
    return io.BytesIO(path) if isinstance(path, bytes) else path


def audit_skops_types(*, path: SkopsSource) -> list[str]:
    """Return the types skops does not trust by default in this file, all of them allow-listed.

    Raises UnsafeArtifact naming every type off our allow-list, InvalidArtifact for a
    file that is not a skops file, PayloadTooLarge for a zip bomb.
    """
    _check_archive(path)
    import skops.io

    try:
        if isinstance(path, bytes):
            untrusted = skops.io.get_untrusted_types(data=path)
        else:
            untrusted = skops.io.get_untrusted_types(file=Path(path))
    except (ModelhostError, MemoryError):
        raise
    except Exception as exc:  # skops parses tenant JSON; any failure means "not a usable skops file"
        raise InvalidArtifact(f"The skops file could not be read: {type(exc).__name__}: {exc}") from exc
    refused = [name for name in untrusted if not is_allowed_type_name(name)]
    if refused:
        raise UnsafeArtifact(refused_globals=refused)
    return untrusted


def load_skops(*, path: SkopsSource) -> LoadedSkops:
    """Audit, then load, a skops file trusting exactly the audited types."""
    trusted = audit_skops_types(path=path)
    import skops.io

    try:
        obj = skops.io.load(_zip_file(path) if isinstance(path, bytes) else Path(path), trusted=trusted)
    except (ModelhostError, MemoryError):
        raise
    except Exception as exc:  # skops builds tenant-described objects; any failure means "unusable"
        raise InvalidArtifact(f"The skops file could not be loaded: {type(exc).__name__}: {exc}") from exc
    return LoadedSkops(obj=obj, trusted_types=tuple(trusted), sklearn_versions=_sklearn_versions(path))


def _check_archive(path: SkopsSource) -> None:
    try:
        with zipfile.ZipFile(_zip_file(path)) as archive:
            check_zip_members(archive, limits=ZipLimits())
            if "schema.json" not in archive.namelist():
                raise InvalidArtifact("The file is a zip without schema.json, so not a skops file.")
    except zipfile.BadZipFile as exc:
        raise InvalidArtifact(f"The skops file is not a readable zip file: {exc}") from exc


def _sklearn_versions(path: SkopsSource) -> tuple[str, ...]:
    """Return the ``_sklearn_version`` values stored in the skops schema, first seen first."""
    with zipfile.ZipFile(_zip_file(path)) as archive:
        schema = json.loads(archive.read("schema.json"))
    found: dict[str, None] = {}
    pending: list[Any] = [schema]
    while pending:  # iterative: tenant JSON can nest deeper than the recursion limit
        node = pending.pop()
        if isinstance(node, dict):
            version = node.get("_sklearn_version")
            if isinstance(version, dict) and isinstance(version.get("content"), str):
                try:
                    value = json.loads(version["content"])
                except json.JSONDecodeError:
                    value = None
                if isinstance(value, str):
                    found.setdefault(value, None)
            pending.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            pending.extend(reversed(node))
    return tuple(found)
