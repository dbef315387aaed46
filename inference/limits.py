"""Rate limits (requests per minute) and monthly quotas (predicted rows per calendar month).

Per API key and per organization, in Redis, atomically: one Lua script reads all four
counters, refuses without counting when a request would take any past its limit (one more
request a minute; its rows this month), and otherwise adds to all four, so a refused request
never uses up quota and a request is never served in part. Fixed windows (the minute, the
UTC calendar month). A limit of 0 means unlimited.

Batch jobs reserve their file's rows at submission through the same script (a job that does
not fit is refused whole) and give back, when they end, what they did not deliver
(`release_rows`).

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
from datetime import UTC, datetime

from platform_site.errors import QuotaExceeded, RateLimited
from platform_site.redis_client import REDIS_ERRORS, get_redis, report_failure, report_success, run_script

# KEYS: key-minute, org-minute, key-month, org-month, route generation[, prediction cache key].
# ARGV: the four limits, minute ttl, month ttl, rows.
# Returns {refused index or 0, 4 counts, generation, cached answer or nil}.
_SCRIPT = """
local generation = redis.call('GET', KEYS[5]) or '0'
local rows = tonumber(ARGV[7])
local steps = {1, 1, rows, rows}
local counts = {}
for i = 1, 4 do
  counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
for i = 1, 4 do
  local limit = tonumber(ARGV[i])
  if limit > 0 and counts[i] + steps[i] > limit then
    return {i, counts[1], counts[2], counts[3], counts[4], generation, false}
  end
end
for i = 1, 4 do
  counts[i] = redis.call('INCRBY', KEYS[i], steps[i])
  if counts[i] == steps[i] then
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

# KEYS: the month counters to give rows back to; ARGV: rows. A counter that expired (its month
# is over) is not made again, and none goes below 0.
_RELEASE_SCRIPT = """
for i = 1, #KEYS do
  local count = tonumber(redis.call('GET', KEYS[i]) or '-1')
  if count >= 0 then
    redis.call('DECRBY', KEYS[i], math.min(count, tonumber(ARGV[1])))
  end
end
return 1
"""
_RELEASE_SCRIPT_SHA = hashlib.sha1(_RELEASE_SCRIPT.encode()).hexdigest()
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
    # The tighter monthly quota of rows that applies (0: none), what is left of it, and the
    # seconds until the month ends; the month counted in ("YYYYMM").
    quota: int = 0
    quota_remaining: int = 0
    quota_reset_seconds: int = 0
    month: str = ""

    def headers(self) -> dict[str, str]:
        if not self.enforced:
            return {}
        headers = {}
        if self.limit:
            headers.update(
                {
                    "X-RateLimit-Limit": str(self.limit),
                    "X-RateLimit-Remaining": str(max(self.remaining, 0)),
                    "X-RateLimit-Reset": str(self.reset_seconds),
                }
            )
        if self.quota:
            headers.update(quota_headers(self.quota, self.quota_remaining, self.quota_reset_seconds))
        return headers


def quota_headers(quota: int, remaining: int, reset_seconds: int) -> dict[str, str]:
    """The monthly quota of predicted rows, what is left of it, and the seconds until it resets."""
    return {"X-Quota-Limit": str(quota), "X-Quota-Remaining": str(max(remaining, 0)), "X-Quota-Reset": str(reset_seconds)}


UNENFORCED = LimitState(limit=0, remaining=0, reset_seconds=0, enforced=False)


def _month_end_seconds(now: datetime) -> int:
    last_day = calendar.monthrange(now.year, now.month)[1]
    end = now.replace(day=last_day, hour=23, minute=59, second=59, microsecond=0)
    return int((end - now).total_seconds()) + 1


@functools.lru_cache(maxsize=4)
def _month_of(minute: int) -> tuple[str, int]:
    """The UTC month ("YYYYMM") of an epoch minute and the epoch second it ends: computed once a minute."""
    start = datetime.fromtimestamp(minute * 60, tz=UTC)
    return f"{start.year}{start.month:02d}", minute * 60 + _month_end_seconds(start)


def check_and_count(
    *,
    subject: str,
    org_id: int,
    key_limit: int,
    org_limit: int,
    key_quota: int,
    org_quota: int,
    rows: int = 1,
    cache_key: str | None = None,
) -> LimitState:
    """Count one request and its `rows` against the four counters, or raise RateLimited / QuotaExceeded.

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
    keys = [f"mh:rl:{subject}:{minute}", f"mh:rl:o{org_id}:{minute}", *_month_keys(subject, org_id, month), ROUTE_GENERATION_KEY]
    if cache_key is not None:
        keys.append(cache_key)
    try:
        refused, key_count, org_count, key_rows, org_rows, generation, cached = run_script(
            client, _SCRIPT, _SCRIPT_SHA, keys, [key_limit, org_limit, key_quota, org_quota, 61, month_left + 60, max(rows, 0)]
        )
        report_success()
    except REDIS_ERRORS as exc:
        report_failure(exc)
        return UNENFORCED
    candidates = [(key_limit, key_count), (org_limit, org_count)]
    applied = [(limit, limit - count) for limit, count in candidates if limit > 0]
    limit, remaining = min(applied, key=lambda item: item[1]) if applied else (0, 0)
    quotas = [(quota, quota - used) for quota, used in [(key_quota, key_rows), (org_quota, org_rows)] if quota > 0]
    quota, quota_remaining = min(quotas, key=lambda item: item[1]) if quotas else (0, 0)
    if refused in (1, 2):
        who = "API key" if refused == 1 else "organization"
        which = key_limit if refused == 1 else org_limit
        raise RateLimited(
            f"The {who}'s limit of {which} requests per minute is used up; retry in {reset} s.",
            headers={"Retry-After": str(reset), **LimitState(which, 0, reset, True).headers()},
        )
    if refused in (3, 4):
        who = "API key" if refused == 3 else "organization"
        which, used = (key_quota, key_rows) if refused == 3 else (org_quota, org_rows)
        left = max(which - used, 0)
        raise QuotaExceeded(
            f"The {who}'s monthly quota is {which} predicted rows and {left} are left; this asks for {rows}. "
            "It resets at the start of next month (UTC).",
            headers={"Retry-After": str(month_left), **quota_headers(which, left, month_left)},
        )
    return LimitState(
        limit=limit,
        remaining=remaining,
        reset_seconds=reset,
        enforced=True,
        route_generation=generation,
        cached=cached,
        quota=quota,
        quota_remaining=quota_remaining,
        quota_reset_seconds=month_left,
        month=month,
    )


def _month_keys(subject: str, org_id: int, month: str) -> list[str]:
    return [f"mh:q:{subject}:{month}", f"mh:q:o{org_id}:{month}"]


def release_rows(*, subject: str, org_id: int, month: str, rows: int) -> bool:
    """Give `rows` back to the month's quota counters (a batch job's reservation it did not use).

    False when Redis could not be reached: the rows stay counted (a quota errs towards
    refusing, never towards serving more than it says).
    """
    client = get_redis()
    if client is None or rows <= 0:
        return client is not None
    try:
        run_script(client, _RELEASE_SCRIPT, _RELEASE_SCRIPT_SHA, _month_keys(subject, org_id, month), [rows])
        report_success()
    except REDIS_ERRORS as exc:
        report_failure(exc)
        return False
    return True
