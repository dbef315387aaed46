"""API key format and hashing.

A key is `mh_<prefix>_<secret>`: the prefix (8 hex characters) is shown in lists so a
person can tell keys apart; the secret is 40 base62 characters (~238 bits). Only
HMAC-SHA256(API_KEY_HASH_KEY, key) is stored: for a high-entropy secret a fast keyed hash
is as strong as a slow password hash, and costs ~1 µs on the hot path instead of ~100 ms.
"""

from __future__ import annotations

import hmac
import secrets
import string

from django.conf import settings

KEY_PREFIX = "mh"
SECRET_ALPHABET = string.ascii_letters + string.digits
SECRET_LENGTH = 40
PREFIX_LENGTH = 8


def generate_key() -> tuple[str, str]:
    """Return (prefix, full plaintext key)."""
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    secret = "".join(secrets.choice(SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    return prefix, f"{KEY_PREFIX}_{prefix}_{secret}"


def hash_key(plaintext: str) -> str:
    # hmac.digest: the same HMAC-SHA256 in one call (OpenSSL's), without an HMAC object a request.
    return hmac.digest(settings.API_KEY_HASH_KEY.encode(), plaintext.encode(), "sha256").hex()


def looks_like_api_key(value: str) -> bool:
    """True when a credential has the key shape; says nothing about validity."""
    parts = value.split("_", 2)
    return (
        len(parts) == 3
        and parts[0] == KEY_PREFIX
        and len(parts[1]) == PREFIX_LENGTH
        and len(parts[2]) == SECRET_LENGTH
        and parts[2].isalnum()
    )
