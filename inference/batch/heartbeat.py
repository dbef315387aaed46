"""A running chunk's heartbeat: proof, every BATCH_HEARTBEAT_SECONDS, that its worker is alive.

A worker killed outright (SIGKILL, out of memory, a lost node) runs no handler, and Redis
hands its unacknowledged task to another worker only after the broker's visibility timeout
(an hour). The heartbeat lets `requeue_stalled_jobs` tell a chunk that is still being scored
(however long it takes) from one whose worker is gone: a chunk whose heartbeat is older than
BATCH_CHUNK_STALL_SECONDS is sent again, so a killed worker's chunk resumes within minutes.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

from django.conf import settings
from django.db import connection
from django.utils import timezone

from inference.models import BatchChunk

logger = logging.getLogger(__name__)


def beat_once(*, chunk_id: int) -> None:
    BatchChunk.objects.filter(id=chunk_id, is_done=False).update(heartbeat_at=timezone.now())


@contextmanager
def beating(*, chunk_id: int):
    """Stamp the chunk's heartbeat now and then every BATCH_HEARTBEAT_SECONDS until the block ends."""
    beat_once(chunk_id=chunk_id)
    stop = threading.Event()

    def run() -> None:
        try:
            while not stop.wait(settings.BATCH_HEARTBEAT_SECONDS):
                try:
                    beat_once(chunk_id=chunk_id)
                except Exception:  # a database hiccup: the next beat tries again
                    logger.warning("could not stamp the heartbeat of batch chunk %s", chunk_id, exc_info=True)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=run, name=f"batch-chunk-{chunk_id}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=settings.BATCH_HEARTBEAT_SECONDS + 5)
