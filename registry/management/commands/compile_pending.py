"""``manage.py compile_pending``: compile the versions still waiting for their compiled form.

An upload queues its version's compile on commit (``registry.services.compile_version``, on a
Celery worker); a broker that was down at that moment leaves the version "compiling", served by
scikit-learn. This queues those again, or with ``--here`` compiles them from this process (each
in the sandbox, as the worker does). Idempotent: a version compiled meanwhile is skipped.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from registry import services


class Command(BaseCommand):
    help = "Queue (or, with --here, run) the compile of every version still waiting for its compiled form."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--here", action="store_true", help="compile in this process (through the sandbox) instead of queueing"
        )

    def handle(self, *args, here: bool = False, **options) -> None:
        ids = services.pending_compile_ids()
        for version_id in ids:
            if here:
                status = services.compile_version(version_id=version_id)
                self.stdout.write(f"version {version_id}: {status}")
            else:
                services.queue_compile(version_id=version_id)
        self.stdout.write(f"{len(ids)} versions {'compiled' if here else 'queued'}.")
