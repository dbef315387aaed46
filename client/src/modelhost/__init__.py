"""Modelhost's command line (`modelhost`) and Python client (`from modelhost import Client`)."""

from modelhost.client import Client
from modelhost.errors import ApiError, ConnectionFailed, JobFailed, ModelhostError, NotLoggedIn, UsageError

__all__ = ["ApiError", "Client", "ConnectionFailed", "JobFailed", "ModelhostError", "NotLoggedIn", "UsageError"]
