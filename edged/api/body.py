"""Reading JSON request bodies: every error is a 400 that names the field."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from edged.api.keys import BODY, READ_TIMEOUT
from edged.errors import BadRequest, EdgedError, PayloadTooLarge
from edged.tomlreader import Table


def _no_constant(name: str) -> Any:
    raise BadRequest(f"request body is not valid JSON: {name} is not a JSON number",
                     code="invalid_json")


def _find_surrogate(value: Any, path: str) -> str | None:
    """The dotted path of the first string holding an unpaired surrogate (not UTF-8 text)."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(item, dict):
            for k, v in item.items():
                stack.append((k, where or "body"))
                stack.append((v, f"{where}.{k}" if where else str(k)))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


class RequestTimeout(EdgedError):
    code = "request_timeout"
    status = 408


async def read_body(request: web.Request) -> bytes:
    """The whole body, within ``daemon.max_body`` (413) and ``daemon.read_timeout`` (408)."""
    timeout = request.app.get(READ_TIMEOUT)
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"request body is larger than the limit of {request.app._client_max_size} bytes"
            " (daemon.max_body)") from None
    except TimeoutError:
        raise RequestTimeout(f"request body did not arrive within daemon.read_timeout "
                             f"({timeout:g}s)") from None


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}``.

    The parsed body is kept on the request (``BODY``) so middlewares (the audit record)
    read the same object instead of parsing again.
    """
    if BODY in request:
        return request[BODY]
    raw = await read_body(request)
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw, parse_constant=_no_constant)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"request body is not valid JSON: {e}", code="invalid_json") from None
        except ValueError as e:  # an integer past Python's int-string limit (4300 digits)
            raise BadRequest(f"request body has a number too large to read: {str(e)[:80]}",
                             code="invalid_json") from None
        except RecursionError:
            raise BadRequest("request body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    bad = _find_surrogate(data, "")
    if bad is not None:
        raise BadRequest(f"{bad}: contains an unpaired surrogate (\\ud800-\\udfff); text must be "
                         "valid Unicode", code="invalid_json")
    request[BODY] = data
    return data


async def json_fields(request: web.Request) -> Table:
    """The body as a ``Table`` whose errors are 400s naming the field."""
    return Table(await json_object(request), "", error=BadRequest)
