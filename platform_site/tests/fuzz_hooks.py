"""schemathesis hooks for test_fuzz.py: each request carries one of the seeded tenant's credentials.

The CLI imports this module (SCHEMATHESIS_HOOKS); the test passes the credentials in
MODELHOST_FUZZ_CREDENTIALS, a JSON object {"api_key": ..., "jwt": ...}.
"""

from __future__ import annotations

import itertools
import json
import os

import schemathesis

_credentials = json.loads(os.environ["MODELHOST_FUZZ_CREDENTIALS"])
# The three ways API.md lets a caller authenticate, in turn: programs and people both get fuzzed.
_headers = itertools.cycle(
    [
        ("X-API-Key", _credentials["api_key"]),
        ("Authorization", f"Bearer {_credentials['jwt']}"),
        ("Authorization", f"Bearer {_credentials['api_key']}"),
    ]
)


@schemathesis.auth(refresh_interval=None)
class TenantCredentials:
    def get(self, case, context):
        return next(_headers)

    def set(self, case, data, context):
        name, value = data
        case.headers = {**(case.headers or {}), name: value}
