"""Prediction records: appended to a Redis stream per request, written to the database in bulk.

The web process never writes a prediction record to the database itself on the request
path. With Redis: each request's record is sent to the stream (with the cache write) before
the response leaves, and the reply is read with the next request's round trip, so the
request does not wait for it; what is sent reaches Redis even if the process dies the next
instant (its socket is closed after sending what it holds), so a web crash loses no record; the worker
reads the stream with a consumer group and acknowledges only after its bulk insert
committed, so a worker crash loses none either (pending entries are claimed again after
RECORD_CLAIM_IDLE_SECONDS). Inserts ignore duplicate prediction ids, so a batch that is
inserted twice is stored once.

Ingestion commits in its own durable transaction (`transaction.atomic(durable=True)`): it
refuses to run inside a caller's transaction, whose rollback for an unrelated reason (a
refused feedback, say) would otherwise take the inserted rows with it after their entries
had left the stream. An entry is acknowledged and deleted only once that commit returned.

Without Redis (make run's embedded mode, or Redis down): records go to a bounded
in-process buffer that a background thread writes in bulk every RECORD_FLUSH_SECONDS; a
crash of that process loses at most the records of that last interval (and never more
than RECORD_BUFFER_MAX).

The stream's bound (RECORD_STREAM_MAXLEN) is never enforced by trimming, which dropped the
oldest records silently. Each record's XADD is followed by an XLEN in the same round trip
(O(1)); when the stream holds RECORD_STREAM_MAXLEN entries or more, the process spills its
records to the in-process buffer for RECORD_STREAM_FULL_SECONDS before looking again (the
bound is overshot by at most the replies a thread has not read yet, MAX_PENDING_SENDS): the
web then writes them to the database itself, in bulk, while the ingestion worker catches up
(counted in modelhost_records_spilled_total). Only when that buffer is full too is a record
lost, and counted (modelhost_records_dropped_total). The backlog is the gauge
modelhost_record_backlog; the ModelhostRecordBacklog alert fires long before the bound.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from datetime import UTC, datetime

import orjson
from django.conf import settings
from django.db import close_old_connections, transaction

from platform_site.metrics import RECORDS_DROPPED, RECORDS_SPILLED, SCRAPE_HOOKS
from platform_site.redis_client import REDIS_ERRORS, get_redis, report_failure, report_success, send_later, settle_pending

logger = logging.getLogger(__name__)

STREAM = "mh:predictions"
GROUP = "ingest"


def publish(*, record: dict, cache_key: str | None = None, cache_value: bytes | None = None, ttl: int = 0) -> None:
    """Append the record to the stream and store the answer in the prediction cache.

    Both commands are sent before the response leaves, and their replies are read with the
    next request's round trip (redis_client.send_later), so a prediction does not wait for
    this write. A record the stream refused (an error reply), or whose reply was lost with
    the connection, goes to the in-process buffer like one sent while Redis is down; the
    insert ignores a prediction id it already holds, so a record that reached both is stored
    once. A refused cache write only costs a future cache hit.
    """
    client = get_redis()
    if client is not None and time.monotonic() >= _stream_full_until:
        commands = [("XADD", STREAM, "*", "r", orjson.dumps(record)), ("XLEN", STREAM)]
        if cache_key is not None and cache_value is not None and ttl > 0:
            commands.append(("SET", cache_key, cache_value, "EX", ttl))
        try:
            send_later(client, tuple(commands), lambda outcome: _settled(record, outcome))
        except REDIS_ERRORS as exc:
            report_failure(exc)
        else:
            return
    elif client is not None:
        RECORDS_SPILLED.inc()
    _local_buffer().append(record)


_stream_full_until = 0.0


def _settled(record: dict, outcome: list | BaseException) -> None:
    """The stream's answer to a published record: keep the record in process unless it was added."""
    if isinstance(outcome, BaseException):
        logger.warning("the reply to a prediction record was lost, kept in process: %s", outcome)
    elif isinstance(outcome[0], Exception):
        report_success()  # Redis answered, even if it refused the record
        logger.warning("the record stream refused a prediction record, kept in process: %s", outcome[0])
    else:
        length = outcome[1]
        if isinstance(length, int) and length >= settings.RECORD_STREAM_MAXLEN:
            _mark_stream_full(length)
        return
    _local_buffer().append(record)


def _mark_stream_full(length: int) -> None:
    global _stream_full_until
    if time.monotonic() >= _stream_full_until:
        logger.warning(
            "the record stream holds %d records (bound %d): spilling to the process buffer", length, settings.RECORD_STREAM_MAXLEN
        )
    _stream_full_until = time.monotonic() + settings.RECORD_STREAM_FULL_SECONDS


def stream_backlog() -> float:
    """Records waiting in the stream (ingested entries are deleted); NaN when Redis does not answer."""
    client = get_redis()
    if client is None:
        return float("nan")
    try:
        return float(client.xlen(STREAM))
    except REDIS_ERRORS:
        return float("nan")


SCRAPE_HOOKS["record_backlog"] = stream_backlog


class LocalRecordBuffer:
    """The fallback: a bounded deque drained into the database by a daemon thread."""

    def __init__(self) -> None:
        self.records: deque = deque(maxlen=settings.RECORD_BUFFER_MAX)
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="prediction-record-flusher", daemon=True)
        self._thread.start()

    def append(self, record: dict) -> None:
        if len(self.records) >= settings.RECORD_BUFFER_MAX:
            RECORDS_DROPPED.inc()  # the deque drops its oldest record to take this one
        self.records.append(record)

    def flush(self) -> int:
        batch = []
        while self.records:
            try:
                batch.append(self.records.popleft())
            except IndexError:
                break
        if batch:
            try:
                with transaction.atomic(durable=True):
                    ingest_records(batch)
            except BaseException:
                # Back at the front, in order, for the next flush (the bound still holds:
                # when the buffer is full meanwhile, the newest records are the ones dropped).
                self.records.extendleft(reversed(batch))
                raise
        return len(batch)

    def _run(self) -> None:
        while True:
            time.sleep(settings.RECORD_FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # a database hiccup must not kill the flusher; the batch is retried next time
                logger.exception("could not flush prediction records")
            finally:
                close_old_connections()


_buffer: LocalRecordBuffer | None = None
_buffer_lock = threading.Lock()


def _local_buffer() -> LocalRecordBuffer:
    global _buffer
    if _buffer is None or _buffer.pid != os.getpid():
        with _buffer_lock:
            if _buffer is None or _buffer.pid != os.getpid():
                _buffer = LocalRecordBuffer()
    return _buffer


def flush_local_buffer() -> int:
    """Write this process's buffered records now (tests, shutdown), after reading the stream's
    last replies to this thread's records (a refused one joins the buffer)."""
    settle_pending()
    return _local_buffer().flush() if _buffer is not None else 0


def ingest_records(records: list[dict]) -> int:
    """Bulk-insert records; duplicates (same prediction id) are ignored, so retries are safe."""
    from inference.models import PredictionRecord

    objects = [
        PredictionRecord(
            prediction_id=r["id"],
            created_at=datetime.fromtimestamp(r["ts"], tz=UTC),
            organization_id=r["org"],
            registered_model_id=r["model"],
            version_id=r["version"],
            experiment_id=r.get("exp"),
            variant=r.get("variant") or "",
            api_key_id=r.get("key"),
            unit_id=r.get("unit") or "",
            protocol=r["proto"],
            rows=r["rows"],
            latency_ms=r["lat"],
            cache_hit=r["hit"],
            status=r.get("status", 200),
            error_code=r.get("err") or "",
            inputs=r.get("in"),
            outputs=r.get("out"),
            mirror_id=r.get("mirror"),
        )
        for r in records
    ]
    PredictionRecord.objects.bulk_create(objects, batch_size=2000, ignore_conflicts=True)
    return len(objects)


def _consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def drain_stream(*, batch_size: int = 5000, max_batches: int = 50) -> int:
    """Move records from the stream to the database; returns how many were acknowledged."""
    client = get_redis()
    if client is None:
        return 0
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except REDIS_ERRORS as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    consumer = _consumer_name()
    done = 0
    # First take over what a crashed consumer read but never acknowledged.
    _, claimed, _ = client.xautoclaim(
        STREAM, GROUP, consumer, min_idle_time=int(settings.RECORD_CLAIM_IDLE_SECONDS * 1000), start_id="0-0", count=batch_size
    )
    if claimed:
        done += _store_and_ack(client, claimed)
    for _ in range(max_batches):
        response = client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=batch_size)
        if not response:
            break
        entries = response[0][1]
        if not entries:
            break
        done += _store_and_ack(client, entries)
        if len(entries) < batch_size:
            break
    return done


def _store_and_ack(client, entries) -> int:
    ids = [entry_id for entry_id, fields in entries if fields]
    records = [orjson.loads(fields[b"r"]) for _, fields in entries if fields and b"r" in fields]
    if records:
        with transaction.atomic(durable=True):  # committed before the entries leave the stream
            ingest_records(records)
    if ids:
        pipe = client.pipeline(transaction=False)
        pipe.xack(STREAM, GROUP, *ids)
        pipe.xdel(STREAM, *ids)
        pipe.execute()
    return len(ids)
