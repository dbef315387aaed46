"""One error hierarchy for the whole platform.

Services raise these; they never build responses. The REST exception handler renders them
as application/problem+json (RFC 9457); the Open Inference Protocol and MLflow paths render
the same exceptions in their own protocol shapes. Hand-written because the shape is ours.
"""

from __future__ import annotations

from typing import Any


class ModelhostError(Exception):
    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.detail = detail or self.title
        self.errors = errors or []
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.detail)

    def as_problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://modelhost.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class InvalidInput(ModelhostError):
    status, code, title = 400, "invalid_input", "The input is not valid"


class MalformedBody(ModelhostError):
    status, code, title = 400, "malformed_body", "The request body could not be parsed"


class Unauthenticated(ModelhostError):
    status, code, title = 401, "not_authenticated", "Authentication is required"


class PermissionDenied(ModelhostError):
    status, code, title = 403, "permission_denied", "You do not have permission to do this"


class NotFound(ModelhostError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(ModelhostError):
    status, code, title = 409, "conflict", "The request conflicts with the current state"


class FeatureNotConfigured(ModelhostError):
    """A feature the operator has not switched on: not an outage, and the detail says how to enable it."""

    status, code, title = 409, "feature_not_configured", "This feature is not configured on this platform"

    def __init__(self, detail: str | None = None, *, feature: str, setting: str, **kwargs) -> None:
        super().__init__(detail, feature=feature, setting=setting, **kwargs)


class PayloadTooLarge(ModelhostError):
    status, code, title = 413, "payload_too_large", "The request is too large"


class UnsupportedMediaType(ModelhostError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class UnsafeArtifact(ModelhostError):
    """A model file refers to code outside the allow-list; `refused_globals` names each one."""

    status, code, title = 422, "unsafe_artifact", "The model file is not safe to load"

    def __init__(self, detail: str | None = None, *, refused_globals: list[str] | None = None, **kw: Any):
        self.refused_globals = sorted(set(refused_globals or []))
        if detail is None and self.refused_globals:
            detail = "The model file refers to globals outside the allow-list: " + ", ".join(self.refused_globals)
        kw.setdefault("errors", [{"field": "file", "message": f"refused global {name}"} for name in self.refused_globals])
        super().__init__(detail, refused_globals=self.refused_globals, **kw)


class InvalidArtifact(ModelhostError):
    """A model file that is not what it claims to be, or that cannot serve predictions."""

    status, code, title = 422, "invalid_artifact", "The model file cannot be used"


class ExplanationUnavailable(ModelhostError):
    """`parameters.explain` asked of a model (or version) no explainer applies to; the detail says why."""

    status, code, title = 422, "explanation_unavailable", "No explanation is available for this model"


class RateLimited(ModelhostError):
    status, code, title = 429, "rate_limited", "Too many requests"


class QuotaExceeded(ModelhostError):
    status, code, title = 429, "quota_exceeded", "The monthly quota is used up"


class ServiceUnavailable(ModelhostError):
    status, code, title = 503, "service_unavailable", "A backing service is unavailable"
