"""Authenticate API keys (hot path) and JWTs for the REST API.

API keys are resolved through a short-lived in-process cache keyed by the key's hash:
a warm request makes no database query. The cache entry lives API_KEY_CACHE_SECONDS, so a
key revoked in any process stops working in every process within that bound; expiry is
checked on every request against the cached expiry time, so it is exact.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from django.conf import settings
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework_simplejwt.authentication import JWTAuthentication

from accounts.keys import hash_key, looks_like_api_key
from accounts.models import ApiKey
from accounts.principals import ApiKeyPrincipal, ApiKeyUser
from platform_site.on_loop import leave_if_on_loop

_MAX_CACHED_KEYS = 10_000
_cache: dict[str, tuple[float, ApiKeyPrincipal | None, str]] = {}
_last_used_written: dict[int, float] = {}
_lock = threading.Lock()


class ApiKeyError(Exception):
    """Why a presented key was refused: `reason` is shown to the caller."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def credential_from_headers(meta: dict) -> str | None:
    """The API key a request carries in `X-API-Key` or `Authorization: Bearer mh_…`, if any."""
    header_key = meta.get("HTTP_X_API_KEY")
    if header_key:
        return header_key.strip()
    authorization = meta.get("HTTP_AUTHORIZATION", "")
    if authorization[:7].lower() == "bearer " and authorization[7:].lstrip().startswith("mh_"):
        return authorization[7:].strip()
    return None


def _load_principal(hashed: str) -> tuple[ApiKeyPrincipal | None, str]:
    key = ApiKey.objects.select_related("organization").filter(hashed_key=hashed).first()
    if key is None:
        return None, "The API key is not valid."
    if key.revoked_at is not None:
        return None, "The API key has been revoked."
    org = key.organization
    return (
        ApiKeyPrincipal(
            id=key.id,
            prefix=key.prefix,
            name=key.name,
            organization_id=org.id,
            organization_slug=org.slug,
            scopes=frozenset(key.scopes),
            expires_at=key.expires_at,
            rate_limit_per_minute=key.rate_limit_per_minute,
            monthly_quota=key.monthly_quota,
            organization_rate_limit_per_minute=org.rate_limit_per_minute,
            organization_monthly_quota=org.monthly_quota,
        ),
        "",
    )


def authenticate_api_key(plaintext: str, *, now: float | None = None) -> ApiKeyPrincipal:
    """Return the key's principal or raise ApiKeyError; no query while the cache is warm."""
    if not looks_like_api_key(plaintext):
        raise ApiKeyError("The API key is malformed; expected mh_<prefix>_<secret>.")
    now = time.monotonic() if now is None else now
    hashed = hash_key(plaintext)
    entry = _cache.get(hashed)
    if entry is None or entry[0] <= now:
        leave_if_on_loop()  # a query: platform_site.on_loop
        principal, reason = _load_principal(hashed)
        with _lock:
            if len(_cache) >= _MAX_CACHED_KEYS:
                _cache.clear()
            _cache[hashed] = (now + settings.API_KEY_CACHE_SECONDS, principal, reason)
    else:
        _, principal, reason = entry
    if principal is None:
        raise ApiKeyError(reason)
    if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
        raise ApiKeyError("The API key has expired.")
    _note_last_used(principal.id, now)
    return principal


def cached_principal(plaintext: str, *, now: float | None = None) -> ApiKeyPrincipal | None:
    """The key's principal if this process holds it and can authenticate it without a query
    (cached, unexpired, its last-use stamp not due); None otherwise. Reads only."""
    if not looks_like_api_key(plaintext):
        return None
    now = time.monotonic() if now is None else now
    entry = _cache.get(hash_key(plaintext))
    if entry is None or entry[0] <= now or entry[1] is None:
        return None
    principal = entry[1]
    last = _last_used_written.get(principal.id)
    if last is None or now - last >= settings.API_KEY_LAST_USED_WRITE_SECONDS:
        return None
    return principal


def _note_last_used(key_id: int, now: float) -> None:
    # One UPDATE per key per process per window instead of one per request.
    last = _last_used_written.get(key_id)
    if last is not None and now - last < settings.API_KEY_LAST_USED_WRITE_SECONDS:
        return
    leave_if_on_loop()  # an UPDATE: platform_site.on_loop
    _last_used_written[key_id] = now
    from django.utils import timezone

    ApiKey.objects.filter(id=key_id).update(last_used_at=timezone.now())


def forget_cached_keys() -> None:
    """Drop this process's cache (revocation in this process takes effect at once)."""
    with _lock:
        _cache.clear()
        _last_used_written.clear()


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        plaintext = credential_from_headers(request.META)
        if plaintext is None:
            return None
        try:
            principal = authenticate_api_key(plaintext)
        except ApiKeyError as exc:
            raise exceptions.AuthenticationFailed(exc.reason) from None
        return ApiKeyUser(principal), principal

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class JwtAuthentication(JWTAuthentication):
    """simplejwt, except that bearer credentials shaped like API keys are not JWTs."""

    def authenticate(self, request):
        if credential_from_headers(request.META) is not None:
            return None
        return super().authenticate(request)


# ---------------------------------------------------------------------------- sign-in attempts
# django-axes counts failed sign-ins; these tell it what an attempt names.


def sign_in_username(request, credentials: dict | None) -> str | None:
    """The account an attempt names: the web form's `username`, the API's `email`, lower-cased
    (emails are case-insensitive here, so case must not open a fresh counter)."""
    credentials = credentials or {}
    name = credentials.get("username") or credentials.get("email")
    return name.strip().lower() if isinstance(name, str) and name.strip() else None


def sign_in_address(request) -> str | None:
    """The address attempts are counted by: REMOTE_ADDR, or behind SIGN_IN_TRUSTED_PROXIES
    proxies the X-Forwarded-For entry the outermost one appended (entries left of it are the
    client's to forge). Hand-written: this is the platform's rule, in six lines."""
    hops = settings.SIGN_IN_TRUSTED_PROXIES
    if hops:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR")


def sign_in_lockout_message() -> str:
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return f"Too many failed sign-ins for this account or from this address: try again in {minutes} minutes."
