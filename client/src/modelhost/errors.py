"""Errors the client raises, each with the exit code the command line ends with.

A platform error carries the problem+json body (RFC 9457) the platform answered with, so a
script or a notebook sees the same `code`, `detail` and per-field `errors` as curl would.
"""

from __future__ import annotations

from typing import Any

# Exit codes scripts can rely on (also in the README). Click itself ends a command with 2
# when its arguments are wrong.
EXIT_OK = 0
EXIT_ERROR = 1  # anything not below, e.g. a 500
EXIT_USAGE = 2
EXIT_AUTH = 3  # not logged in, credentials refused (401) or not allowed (403)
EXIT_NOT_FOUND = 4  # no such model, version, job (or another organization's, which looks the same)
EXIT_INVALID = 5  # the platform refused the request: bad rows or fields, a state conflict, too large (400, 409, 413, 415)
EXIT_REFUSED_MODEL = 6  # the model file was refused at upload (422: unsafe or unusable)
EXIT_LIMITED = 7  # rate limit or quota (429)
EXIT_UNAVAILABLE = 8  # the platform cannot be reached or is unavailable (connection error, 502-504)
EXIT_JOB_FAILED = 9  # a batch job, replay or drift report ended failed or cancelled, or did not end in time


class ModelhostError(Exception):
    """Base of the client's errors."""

    exit_code = EXIT_ERROR


class UsageError(ModelhostError):
    """The call cannot be made as asked (missing credentials, an ambiguous organization, bad data)."""

    exit_code = EXIT_USAGE


class NotLoggedIn(ModelhostError):
    exit_code = EXIT_AUTH


class ConnectionFailed(ModelhostError):
    exit_code = EXIT_UNAVAILABLE


class JobFailed(ModelhostError):
    """Work on the platform's workers (a batch job, a replay, a drift report) failed or did not end in time.

    `job` is its last state.
    """

    exit_code = EXIT_JOB_FAILED

    def __init__(self, message: str, *, job: dict) -> None:
        super().__init__(message)
        self.job = job


_EXIT_BY_STATUS = {
    401: EXIT_AUTH,
    403: EXIT_AUTH,
    404: EXIT_NOT_FOUND,
    400: EXIT_INVALID,
    409: EXIT_INVALID,
    413: EXIT_INVALID,
    415: EXIT_INVALID,
    422: EXIT_REFUSED_MODEL,
    429: EXIT_LIMITED,
    502: EXIT_UNAVAILABLE,
    503: EXIT_UNAVAILABLE,
    504: EXIT_UNAVAILABLE,
}


class ApiError(ModelhostError):
    """The platform answered with an error; `problem` is its body (problem+json, or the text it sent)."""

    def __init__(self, *, status: int, problem: dict[str, Any], method: str, url: str, retry_after: str | None = None) -> None:
        self.status = status
        self.problem = problem
        self.method = method
        self.url = url
        # problem+json on /api/; the MLflow path's {error_code, message}; the V2 path's {error}.
        self.code: str = problem.get("code") or problem.get("error_code") or f"http_{status}"
        self.title: str = problem.get("title") or ""
        self.detail: str = (
            problem.get("detail") or problem.get("message") or problem.get("error") or self.title or f"HTTP {status}"
        )
        self.errors: list[dict[str, Any]] = list(problem.get("errors") or [])
        self.refused_globals: list[str] = list(problem.get("refused_globals") or [])
        self.retry_after = retry_after
        self.exit_code = _EXIT_BY_STATUS.get(status, EXIT_ERROR)
        super().__init__(f"{self.detail} ({status} {self.code})")

    def lines(self) -> list[str]:
        """The detail, then one line per error the platform named (field, row, column)."""
        out = [f"{self.detail} ({self.status} {self.code})"]
        for error in self.errors:
            where = ", ".join(f"{key} {error[key]}" for key in ("field", "row", "column") if key in error)
            out.append(f"  {where + ': ' if where else ''}{error.get('message', '')}")
        return out
