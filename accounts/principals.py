"""Who is calling: a person (session or JWT) or a program (API key), as one value."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class ApiKeyPrincipal:
    """An immutable snapshot of an API key, safe to keep in an in-process cache."""

    id: int
    prefix: str
    name: str
    organization_id: int
    organization_slug: str
    scopes: frozenset[str]
    expires_at: datetime | None
    rate_limit_per_minute: int = 0
    monthly_quota: int = 0
    organization_rate_limit_per_minute: int = 0
    organization_monthly_quota: int = 0

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes or (scope == "read" and "write" in self.scopes)


class ApiKeyUser:
    """What `request.user` is for an API-key request: authenticated, but not a person."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, principal: ApiKeyPrincipal) -> None:
        self.api_key = principal

    def __str__(self) -> str:
        return f"api key {self.api_key.prefix}"


@dataclass(frozen=True)
class Caller:
    user: object | None = None
    api_key: ApiKeyPrincipal | None = None
    ip_address: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def person(self):
        """The User behind the call, or None for an API key."""
        return None if self.api_key is not None else self.user


def caller_from_request(request) -> Caller:
    principal = request.auth if isinstance(getattr(request, "auth", None), ApiKeyPrincipal) else None
    ip = request.META.get("REMOTE_ADDR") or None
    if principal is not None:
        return Caller(user=None, api_key=principal, ip_address=ip)
    return Caller(user=request.user, ip_address=ip)
