"""Restore a `backup_platform` folder into a fresh database and an empty model storage folder.

The database must exist and be empty (`createdb`); the storage folder must be empty or new.
The files are checked against the backup's manifest first. Redis starts empty: caches fill on
use (see backup_platform for what that loses).
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
from pathlib import Path

import environ
from django.core.management.base import BaseCommand, CommandError

from platform_site.management.commands.backup_platform import (
    DATABASE_FILE,
    MANIFEST_FILE,
    STORAGE_FILE,
    libpq_environment,
    sha256_of,
)


class Command(BaseCommand):
    help = "Restore a backup folder into a fresh PostgreSQL database and an empty model storage folder."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--from", dest="source", required=True, help="The folder backup_platform wrote.")
        parser.add_argument("--database-url", required=True, help="postgres://... of an existing, empty database.")
        parser.add_argument("--storage-root", required=True, help="An empty or new folder for the model files.")

    def handle(self, *args, source: str, database_url: str, storage_root: str, **options) -> None:
        started = time.monotonic()
        folder = Path(source)
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        for name, expected in manifest["files"].items():
            if sha256_of(folder / name) != expected:
                raise CommandError(f"{name} does not match the backup's manifest: the backup is damaged.")
        root = Path(storage_root)
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise CommandError(f"{root} is not empty.")
        database = environ.Env.db_url_config(database_url)
        subprocess.run(
            [
                "pg_restore",
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--dbname",
                database["NAME"],
                str(folder / DATABASE_FILE),
            ],
            env=libpq_environment(database),
            check=True,
        )
        with tarfile.open(folder / STORAGE_FILE, "r:gz") as tar:
            tar.extractall(root, filter="data")  # no absolute paths, links out or devices
        self.stdout.write(f"restored {folder} into {database['NAME']} and {root} in {time.monotonic() - started:.1f} s")
