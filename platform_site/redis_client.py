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
    global _open_until
    _open_until = time.monotonic() + settings.REDIS_RETRY_SECONDS
    CACHE_UP.set(0)
    logger.warning("redis unavailable, falling back for %.1fs: %s", settings.REDIS_RETRY_SECONDS, exc)


def report_success() -> None:
    global _open_until
    if _open_until:
        _open_until = 0.0
    CACHE_UP.set(1)


def reset() -> None:
    """Forget the client and close the breaker (tests, and after a fork)."""
    global _client, _open_until
    if _client is not None:
        _client.close()
    _client = None
    _open_until = 0.0


REDIS_ERRORS = (redis.RedisError, OSError)
