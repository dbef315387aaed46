"""orjson parsing for the REST API; a malformed body is a problem naming the position."""

from __future__ import annotations

from typing import Any

import orjson
from rest_framework.parsers import BaseParser

from platform_site.errors import MalformedBody


class OrjsonParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        raw = stream.read() if stream is not None else b""
        return parse_json_body(raw)


def parse_json_body(raw: bytes) -> Any:
    if not raw.strip():
        return {}  # an empty body is an empty object; required fields are then named as missing
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"The request body is not valid JSON: {exc}.") from None
