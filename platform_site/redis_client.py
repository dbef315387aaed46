"""The shared Redis connection for the hot path, with a bound on every call and a breaker.

Every call has a socket timeout (REDIS_SOCKET_TIMEOUT). After a failure the breaker opens
for REDIS_RETRY_SECONDS: callers get None at once and take their documented fallback
(no prediction cache, rate limits fail open, records buffered in-process), instead of each
request paying the timeout. `modelhost_cache_up` says which state a process is in.
"""
from __future__ import annotations

import logging
import time

import redis
from django.conf import settings

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
    if _client is not None:
        _client.close()
    _client = None
    _open_until = 0.0
    _reported_up = False


def round_trip(client: redis.Redis, *commands: tuple) -> list:
    """Send `commands` on one pooled connection and read their replies: one round trip.

    The hot path's two Redis calls go through here rather than through redis-py's command
    methods and pipeline object: those wrap each call in retry, event and response-callback
    layers that cost 80-130 µs of CPU per call on this project's machine, more than the
    socket I/O itself (bench/RESULTS.md). The connection, its pool, timeouts, health checks
    and the hiredis parser are redis-py's. Replies are raw (bytes, ints, lists); an error
    reply is returned in its place as a ResponseError, so one bad command never leaves the
    others' replies unread. A connection error discards the connection and is raised.
    """
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command(connection.pack_commands(commands))
        replies = []
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as error:
                replies.append(error)
        return replies
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


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
