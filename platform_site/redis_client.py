"""The shared Redis connection for the hot path, with a bound on every call and a breaker.

Every call has a socket timeout (REDIS_SOCKET_TIMEOUT). After a failure the breaker opens
for REDIS_RETRY_SECONDS: callers get None at once and take their documented fallback
(no prediction cache, rate limits fail open, records buffered in-process), instead of each
request paying the timeout. `modelhost_cache_up` says which state a process is in.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections import deque
from typing import Callable

import hiredis
import redis
from django.conf import settings
from redis._parsers import BaseParser

from platform_site.metrics import CACHE_UP

logger = logging.getLogger(__name__)

_client: redis.Redis | None = None
_open_until = 0.0


def get_redis() -> redis.Redis | None:
    """The client, or None when Redis is not configured or the breaker is open."""
    global _client
    if not settings.REDIS_URL:
        return None
    if _open_until and time.monotonic() < _open_until:
        return None
    if _client is None:
        _client = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
            health_check_interval=30,
        )
    return _client


def report_failure(exc: Exception) -> None:
    """Open the breaker after a Redis error; the next call after the pause tries again."""
    global _open_until, _reported_up
    _open_until = time.monotonic() + settings.REDIS_RETRY_SECONDS
    CACHE_UP.set(0)
    _reported_up = False
    logger.warning("redis unavailable, falling back for %.1fs: %s", settings.REDIS_RETRY_SECONDS, exc)


_reported_up = False


def report_success() -> None:
    global _open_until, _reported_up
    if _open_until:
        _open_until = 0.0
    if not _reported_up:  # a multiprocess gauge write costs a lock and a file write: only on change
        CACHE_UP.set(1)
        _reported_up = True


def reset() -> None:
    """Forget the client and close the breaker (tests, and after a fork)."""
    global _client, _open_until, _reported_up
    hot = getattr(_hot, "connection", None)
    if hot is not None and hot.pid == os.getpid():
        _drop(hot, None)
    if _client is not None:
        _client.close()
    _client = None
    _open_until = 0.0
    _reported_up = False


class _HotConnection:
    """One thread's hot-path connection, and the replies it has not read yet.

    `pending` holds, in send order, how many replies each deferred send expects and the
    callback that takes them. They are read before the next round trip's own replies, or by
    settle(). The connection is not shared while it holds unread replies: each thread keeps
    its own, returned to the pool (disconnected) when the thread ends.

    redis-py opens the connection (address, TLS, AUTH, SELECT, timeouts) and closes it; the
    commands and replies on it go through hiredis directly, the packer and reader redis-py
    itself uses. redis-py's layers over them (per-command encoding and buffering, health-check
    and error-mapping wrappers, a host string built for each reply) cost 8 % of an iris
    prediction's CPU: 322-342 against 297-298 µs in process, two runs each of
    `bench/profile_hotpath.py --loop-only --repeat 40 --requests 250`.
    Error replies come back as redis-py's exception classes (NoScriptError, ResponseError,
    ...), in place of the reply.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        self.connection = self.pool.get_connection()  # connected, authenticated, database selected
        self.sock = self.connection._sock
        self.plain_tcp = _plain_tcp(self.sock)
        self.reader = hiredis.Reader(protocolError=redis.exceptions.InvalidResponse, replyError=BaseParser.parse_error)
        self.buffer = bytearray(_READ_SIZE)
        self.pid = os.getpid()
        self.pending: deque[tuple[int, Callable[[list | BaseException], None]]] = deque()
        self.last_used = time.monotonic()
        weakref.finalize(self, _give_back, self.pool, self.connection, self.pid)

    def send(self, commands: tuple) -> None:
        self._write(commands, 0)

    def _write(self, commands: tuple, flags: int) -> None:
        try:
            self.sock.sendall(b"".join(map(hiredis.pack_command, commands)), flags)
        except OSError as exc:
            raise _redis_error(exc, "writing to") from exc

    def send_more(self, commands: tuple) -> None:
        """Queue `commands` in the kernel's send buffer, to leave with the next send (MSG_MORE).

        Linux holds data sent with MSG_MORE until the socket's next send without it, at most
        about 200 ms, and sends it when the socket is closed, a process's exit included. So
        the commands are as safe from a crash of this process as after a plain send, and the
        next round trip carries them in the same segment: one transmission, and one read on
        Redis's side, per request instead of two. Where the flag does not apply (TLS, Unix
        sockets, other systems) this is a plain send.
        """
        self._write(commands, _MSG_MORE if self.plain_tcp else 0)

    def push(self) -> None:
        """Send what send_more() left in the kernel's buffer now (setting TCP_NODELAY pushes it)."""
        if self.plain_tcp:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read(self, count: int) -> list:
        replies = []
        reader, sock, buffer = self.reader, self.sock, self.buffer
        while len(replies) < count:
            reply = reader.gets()
            if reply is False:
                try:
                    received = sock.recv_into(buffer)
                except OSError as exc:
                    raise _redis_error(exc, "reading from") from exc
                if not received:
                    raise redis.ConnectionError("Connection closed by server.")
                reader.feed(buffer, 0, received)
            else:
                replies.append(reply)
        return replies

    def read_pending(self) -> None:
        while self.pending:
            count, settle = self.pending[0]
            replies = self.read(count)
            self.pending.popleft()
            _settle(settle, replies)

    def fail_pending(self, exc: BaseException) -> None:
        while self.pending:
            _, settle = self.pending.popleft()
            _settle(settle, exc)


def _redis_error(exc: OSError, doing: str) -> redis.RedisError:
    """redis-py's error for a socket error (the caller's _drop closes the connection)."""
    if isinstance(exc, socket.timeout):
        return redis.TimeoutError(f"Timeout {doing} socket")
    return redis.ConnectionError(f"Error {doing} socket: {exc}")


def _plain_tcp(sock) -> bool:
    """A plain TCP socket (not TLS, not a Unix socket): where MSG_MORE and TCP_NODELAY apply."""
    return type(sock) is socket.socket and sock.family in (socket.AF_INET, socket.AF_INET6)


def _settle(settle: Callable[[list | BaseException], None], outcome: list | BaseException) -> None:
    try:
        settle(outcome)
    except Exception:  # one caller's bookkeeping must not break the next request's round trip
        logger.exception("a deferred Redis reply's handler failed")


def _give_back(pool, connection, pid: int) -> None:
    if os.getpid() == pid:
        connection.disconnect()
        pool.release(connection)


_hot = threading.local()
MAX_PENDING_SENDS = 64
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_READ_SIZE = 65536
# A connection unused for this long is checked (a PING) before the next round trip.
IDLE_CHECK_SECONDS = 5.0


def _hot_connection(client: redis.Redis) -> _HotConnection:
    hot = getattr(_hot, "connection", None)
    if hot is None or hot.pool is not client.connection_pool or hot.pid != os.getpid():
        if hot is not None and hot.pid == os.getpid():
            _drop(hot, None)
        hot = _hot.connection = _HotConnection(client)
    return hot


def _drop(hot: _HotConnection, exc: BaseException | None) -> None:
    """Forget this thread's connection. With no `exc`, the replies it owes are read first;
    with one (or if reading fails), the connection is closed and their callers get the error."""
    if exc is None and hot.pending:
        try:
            hot.push()
            hot.read_pending()
        except REDIS_ERRORS as error:
            exc = error
    if exc is not None:
        hot.connection.disconnect()
        hot.fail_pending(exc)
    if getattr(_hot, "connection", None) is hot:
        _hot.connection = None


def round_trip(client: redis.Redis, *commands: tuple) -> list:
    """Send `commands` on this thread's connection and read their replies: one round trip.

    The hot path's Redis calls go through here rather than through redis-py's command
    methods and pipeline object: those wrap each call in retry, event and response-callback
    layers that cost 80-130 µs of CPU per call on this project's machine, more than the
    socket I/O itself (bench/RESULTS.md). The connection, its pool and timeouts are
    redis-py's; commands and replies go through hiredis (see _HotConnection). Replies are raw
    (bytes, ints, lists); an error reply is returned in its place as a ResponseError, so one
    bad command never leaves the others' replies unread. A connection idle for
    IDLE_CHECK_SECONDS is checked first (_checked_after_idle). Replies owed to earlier
    send_later() calls are read first (they are usually in the socket already). A connection
    error closes the connection, fails the owed replies and is raised.
    """
    hot = _hot_connection(client)
    if time.monotonic() - hot.last_used > IDLE_CHECK_SECONDS:
        hot = _checked_after_idle(client, hot)
    try:
        hot.send(commands)
        hot.read_pending()
        replies = hot.read(len(commands))
    except BaseException as exc:
        _drop(hot, exc)
        raise
    hot.last_used = time.monotonic()
    return replies


def _checked_after_idle(client: redis.Redis, hot: _HotConnection) -> _HotConnection:
    """Check a connection idle for IDLE_CHECK_SECONDS before sending on it again.

    Redis may have dropped it meanwhile (a restart, a failover, an idle timeout). The replies
    it still owes are read, then a PING: if the connection is dead, the owed replies' callers
    get the error (a record is kept in process), and the request goes on over a new
    connection instead of failing open, which would have opened the breaker for every
    request of the next seconds.
    """
    try:
        hot.push()
        hot.read_pending()
        # The replies may have been waiting in the socket before Redis dropped it: a PING tells.
        hot.send((("PING",),))
        hot.read(1)
    except REDIS_ERRORS as exc:
        _drop(hot, exc)
        return _hot_connection(client)
    return hot


def send_later(client: redis.Redis, commands: tuple, settle: Callable[[list | BaseException], None]) -> None:
    """Send `commands` with this thread's next round trip and read their replies then.

    Once this returns, the commands are in the kernel's socket buffer: Redis receives them
    with the next round trip, within about 200 ms if none comes, and even if this process
    dies the next instant (a process's exit closes its sockets after sending what they hold;
    see _HotConnection.send_more). `settle` gets the replies (a list, error replies as
    ResponseError) when the next round trip or settle() reads them, or the exception that
    lost them (then whether Redis applied the commands is unknown). A send that fails raises
    at once, and `settle` is not called.
    """
    hot = _hot_connection(client)
    try:
        hot.send_more(commands)
    except BaseException as exc:
        _drop(hot, exc)
        raise
    hot.pending.append((len(commands), settle))
    hot.last_used = time.monotonic()
    if len(hot.pending) >= MAX_PENDING_SENDS:  # a thread that only sends: read what it owes
        settle_pending()


def settle_pending() -> None:
    """Read every reply this thread's connection still owes to send_later()'s callers."""
    hot = getattr(_hot, "connection", None)
    if hot is None or not hot.pending:
        return
    try:
        hot.push()
        hot.read_pending()
    except REDIS_ERRORS as exc:
        _drop(hot, exc)
        report_failure(exc)


def run_script(client: redis.Redis, script: str, sha: str, keys: list, args: list):
    """EVALSHA in one round trip; loads the script and retries once if Redis lost it."""
    command = ("EVALSHA", sha, len(keys), *keys, *args)
    reply = round_trip(client, command)[0]
    if isinstance(reply, redis.exceptions.NoScriptError):
        client.script_load(script)
        reply = round_trip(client, command)[0]
    if isinstance(reply, redis.ResponseError):
        raise reply
    return reply


REDIS_ERRORS = (redis.RedisError, OSError)
