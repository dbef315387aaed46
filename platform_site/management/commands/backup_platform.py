"""Back up a running platform: the database and the model storage, into one folder.

What is kept: PostgreSQL (pg_dump's custom format: every account, key hash, model version,
record, rollup, job) and the model storage (local folder, as a tar.gz). What is not: Redis,
which holds only caches (prediction answers, key and route caches, rate-limit counters:
rebuilt on use; a quota counter restarts its month), the Celery queues (beat re-sends
scheduled work; a batch job's chunks are sent again by requeue_stalled_jobs) and the record
stream, which is drained into the database first so no prediction record is left only in
Redis. With MODEL_STORAGE=s3 the bucket is backed up by the object store itself (versioning
and replication, docs/operations.md), and this command refuses rather than copy it partly.
Restore with `restore_platform`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

DATABASE_FILE = "database.dump"
STORAGE_FILE = "models.tar.gz"
MANIFEST_FILE = "manifest.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def libpq_environment(database: dict) -> dict[str, str]:
    """pg_dump / pg_restore reach the database through libpq's variables (no password on the command line)."""
    environment = {
        **os.environ,
        "PGHOST": database["HOST"] or "127.0.0.1",
        "PGPORT": str(database["PORT"] or 5432),
        "PGUSER": database["USER"],
    }
    if database.get("PASSWORD"):
        environment["PGPASSWORD"] = database["PASSWORD"]
    return environment


class Command(BaseCommand):
    help = "Drain the prediction record stream, then write the database and the model storage to a backup folder."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--to", required=True, help="An empty or new folder for the backup.")

    def handle(self, *args, to: str, **options) -> None:
        from inference.records import drain_stream, flush_local_buffer

        if settings.MODEL_STORAGE != "local":
            raise CommandError(
                "MODEL_STORAGE is not local: back up the bucket with the object store's versioning or replication."
            )
        if connection.vendor != "postgresql":
            raise CommandError(
                "The backup needs PostgreSQL (DATABASE_URL); SQLite is a file to copy while the platform is stopped."
            )
        folder = Path(to)
        folder.mkdir(parents=True, exist_ok=True)
        if any(folder.iterdir()):
            raise CommandError(f"{folder} is not empty.")
        started = time.monotonic()
        drained = 0
        while True:  # the stream is a queue, not a store: what is in it goes to the database first
            moved = drain_stream()
            drained += moved
            if moved == 0:
                break
        flush_local_buffer()

        database = settings.DATABASES["default"]
        dump = folder / DATABASE_FILE
        subprocess.run(
            ["pg_dump", "--format=custom", "--no-owner", "--no-privileges", "--file", str(dump), database["NAME"]],
            env=libpq_environment(database),
            check=True,
        )
        storage_root = Path(settings.STORAGES["models"]["OPTIONS"]["location"])
        archive = folder / STORAGE_FILE
        with tarfile.open(archive, "w:gz") as tar:
            if storage_root.exists():
                tar.add(storage_root, arcname=".")
        manifest = {
            "created_at": timezone.now().isoformat(),
            "database": database["NAME"],
            "records_drained": drained,
            "files": {name: sha256_of(folder / name) for name in (DATABASE_FILE, STORAGE_FILE)},
        }
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        self.stdout.write(
            f"backed up {database['NAME']} and {storage_root} to {folder} in {time.monotonic() - started:.1f} s "
            f"({drained} records drained first)"
        )
