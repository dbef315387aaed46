"""The Redis prediction cache: key = version id + hash of the canonical input and options.

The hot path reads it in the rate limit's round trip (inference.limits) and stores answers
with the prediction record (inference.records), on the next round trip. The key names the
version, so a promotion or rollback can never serve another version's answer. Redis down:
every lookup is a miss and nothing is stored (served uncached).
"""

from __future__ import annotations

import hashlib

import orjson

from inference.protocols.outputs import json_values
from platform_site.redis_client import REDIS_ERRORS, get_redis, report_failure, report_success


def cache_key(*, version_id: int, canonical_input: bytes, want_proba: bool, explain: bool = False) -> str:
    digest = hashlib.blake2b(canonical_input, digest_size=16)
    digest.update(b"p" if want_proba else b"-")
    if explain:
        digest.update(b"e")
    return f"mh:pc:{version_id}:{digest.hexdigest()}"


def encode(*, predictions, probabilities, explanation: dict | None = None) -> bytes:
    """The cached answer: labels keep their JSON type (string, bool, number), as the protocols send them;
    an explained answer carries its explanation under "e"."""
    value = {"p": json_values(predictions), "q": json_values(probabilities)}
    if explanation is not None:
        value["e"] = explanation
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def decode(raw: bytes) -> dict:
    return orjson.loads(raw)


def lookup(key: str) -> dict | None:
    """A separate read, for when the rate limit's round trip could not carry it."""
    client = get_redis()
    if client is None:
        return None
    try:
        raw = client.get(key)
        report_success()
    except REDIS_ERRORS as exc:
        report_failure(exc)
        return None
    return orjson.loads(raw) if raw is not None else None
