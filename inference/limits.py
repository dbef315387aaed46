"""Rate limits (requests per minute) and monthly quotas (requests per calendar month).

Per API key and per organization, in Redis, atomically: one Lua script reads all four
counters, refuses without counting when any is over its limit, and otherwise increments
all four, so a refused request never uses up quota. Fixed windows (the minute, the UTC
calendar month). A limit of 0 means unlimited.

The same round trip reads the prediction cache when the request has a cache key (KEYS[6]):
a request needs one Redis call before predicting, not two, and a refused request reads nothing.

Redis down: limits fail OPEN (the request is served and not counted) so an outage of the
cache never becomes an outage of predictions; `modelhost_cache_up` and /readyz show it.
"""
from __future__ import annotations

import calendar
import functools
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from platform_site.errors import QuotaExceeded, RateLimited
from platform_site.redis_client import REDIS_ERRORS, get_redis, report_failure, report_success, run_script

# KEYS: key-minute, org-minute, key-month, org-month, route generation[, prediction cache key].
# ARGV: the four limits, minute ttl, month ttl.
# Returns {refused index or 0, 4 counts, generation, cached answer or nil}.
_SCRIPT = """
local generation = redis.call('GET', KEYS[5]) or '0'
local counts = {}
for i = 1, 4 do
  counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
for i = 1, 4 do
  local limit = tonumber(ARGV[i])
  if limit > 0 and counts[i] >= limit then
    return {i, counts[1], counts[2], counts[3], counts[4], generation, false}
  end
end
for i = 1, 4 do
  counts[i] = redis.call('INCR', KEYS[i])
  if counts[i] == 1 then
    redis.call('EXPIRE', KEYS[i], i <= 2 and ARGV[5] or ARGV[6])
  end
end
local cached = false
if KEYS[6] then
  cached = redis.call('GET', KEYS[6])
end
return {0, counts[1], counts[2], counts[3], counts[4], generation, cached}
"""
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
ROUTE_GENERATION_KEY = "mh:routes:generation"


@dataclass(frozen=True)
class LimitState:
    """What the X-RateLimit-* headers report: the tighter per-minute limit that applies."""

    limit: int
    remaining: int
    reset_seconds: int
    enforced: bool
    # The routing generation read in the same round trip (None when Redis was not asked).
    route_generation: bytes | None = None
    # The prediction cache's stored answer for the request's cache key, if any.
    cached: bytes | None = None

    def headers(self) -> dict[str, str]:
        if not self.enforced or not self.limit:
            return {}
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(self.remaining, 0)),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }


UNENFORCED = LimitState(limit=0, remaining=0, reset_seconds=0, enforced=False)


def _month_end_seconds(now: datetime) -> int:
    last_day = calendar.monthrange(now.year, now.month)[1]
    end = now.replace(day=last_day, hour=23, minute=59, second=59, microsecond=0)
    return int((end - now).total_seconds()) + 1


@functools.lru_cache(maxsize=4)
def _month_of(minute: int) -> tuple[str, int]:
    """The UTC month ("YYYYMM") of an epoch minute and the epoch second it ends: computed once a minute."""
    start = datetime.fromtimestamp(minute * 60, tz=timezone.utc)
    return f"{start.year}{start.month:02d}", minute * 60 + _month_end_seconds(start)


def check_and_count(
    *, subject: str, org_id: int, key_limit: int, org_limit: int, key_quota: int, org_quota: int, cache_key: str | None = None
) -> LimitState:
    """Count one request against the four counters, or raise RateLimited / QuotaExceeded.

    `subject` is `k<api key id>` or `u<user id>` (a person trying a model in the browser).
    With a `cache_key`, the answer carries what the prediction cache holds for it.
    """
    client = get_redis()
    if client is None:
        return UNENFORCED
    now = time.time()
    second = int(now)
    minute = second // 60
    month, month_end = _month_of(minute)
    reset = 60 - second % 60
    month_left = month_end - second
    keys = [f"mh:rl:{subject}:{minute}", f"mh:rl:o{org_id}:{minute}", f"mh:q:{subject}:{month}", f"mh:q:o{org_id}:{month}", ROUTE_GENERATION_KEY]
    if cache_key is not None:
        keys.append(cache_key)
    try:
        refused, key_count, org_count, _, _, generation, cached = run_script(
            client, _SCRIPT, _SCRIPT_SHA, keys, [key_limit, org_limit, key_quota, org_quota, 61, month_left + 60]
        )
        report_success()
    except REDIS_ERRORS as exc:
        report_failure(exc)
        return UNENFORCED
    candidates = [(key_limit, key_count), (org_limit, org_count)]
    applied = [(limit, limit - count) for limit, count in candidates if limit > 0]
    limit, remaining = min(applied, key=lambda item: item[1]) if applied else (0, 0)
    state = LimitState(limit=limit, remaining=remaining, reset_seconds=reset, enforced=True, route_generation=generation, cached=cached)
    if refused in (1, 2):
        who = "API key" if refused == 1 else "organization"
        which = key_limit if refused == 1 else org_limit
        raise RateLimited(
            f"The {who}'s limit of {which} requests per minute is used up; retry in {reset} s.",
            headers={"Retry-After": str(reset), **LimitState(which, 0, reset, True).headers()},
        )
    if refused in (3, 4):
        who = "API key" if refused == 3 else "organization"
        which = key_quota if refused == 3 else org_quota
        raise QuotaExceeded(
            f"The {who}'s monthly quota of {which} requests is used up; it resets at the start of next month (UTC).",
            headers={"Retry-After": str(month_left)},
        )
    return state
