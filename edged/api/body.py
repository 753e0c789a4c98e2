"""Reading JSON request bodies: every error is a 400 that names the field."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from edged.errors import BadRequest, PayloadTooLarge
from edged.tomlreader import Table


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}``."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"request body is larger than the limit of {request.app._client_max_size} bytes"
        ) from None
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return data


async def json_fields(request: web.Request) -> Table:
    """The body as a ``Table`` whose errors are 400s naming the field."""
    return Table(await json_object(request), "", error=BadRequest)
