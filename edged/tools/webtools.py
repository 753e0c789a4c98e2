"""HTTP tools: a store's POS or a clinic's scheduling system, declared in config.

The URL is fixed by config; arguments fill its ``{x}`` fields (URL-encoded) and the rest go
as the query (GET, DELETE) or a JSON body. Only the configured host is ever reached: no
redirect is followed. Responses are capped at ``max_response_bytes``; a failure of any kind
is a clear sentence in the reply, never an exception out of the tool.
"""

from __future__ import annotations

import json
import string
from typing import Any
from urllib.parse import quote

import aiohttp

from edged.errors import EdgedError, Unavailable
from edged.tools.config import HttpToolSpec
from edged.tools.mcp import read_headers

_FIELDS = string.Formatter()


class HttpToolFailed(EdgedError):
    code = "http_tool_failed"
    status = 502


class HttpTool:
    def __init__(self, spec: HttpToolSpec, session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self._session = session
        self.calls = 0
        self.failures = 0
        self._header_values: dict[str, str] | None = None

    def _headers(self) -> dict[str, str]:
        """The headers file, read at the first call (a missing or unsafe file fails that
        call, not the start) and kept: a rotated key takes a restart."""
        if self._header_values is None:
            path = self.spec.headers_file
            self._header_values = read_headers(path) if path else {}
        return self._header_values

    async def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        spec = self.spec
        in_url = {f for _, f, _, _ in _FIELDS.parse(spec.url) if f}
        url = spec.url.format_map({k: quote(str(v), safe="") for k, v in arguments.items()
                                   if k in in_url})
        rest = {k: v for k, v in arguments.items() if k not in in_url}
        headers = self._headers()
        send: dict[str, Any] = {"params": {k: str(v) for k, v in rest.items()}} \
            if spec.method in ("GET", "DELETE") else {"json": rest}
        self.calls += 1
        try:
            async with self._session.request(
                    spec.method, url, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=spec.timeout), **send) as resp:
                if 300 <= resp.status < 400:
                    raise HttpToolFailed(
                        f"{spec.name}: the service redirected to {resp.headers.get('Location')!r};"
                        " edged follows no redirects (only the configured host is reached)")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > spec.max_bytes:  # read no further than the cap
                        raise HttpToolFailed(f"{spec.name}: the answer is over "
                                             f"{spec.max_bytes} bytes (max_response_bytes)")
                if resp.status >= 400:
                    raise HttpToolFailed(f"{spec.name}: the service answered HTTP "
                                         f"{resp.status}")
        except TimeoutError:
            self.failures += 1
            raise
        except aiohttp.ClientError as e:
            self.failures += 1
            raise Unavailable(f"{spec.name}: the service cannot be reached ({e})",
                              code="http_tool_unreachable") from None
        except EdgedError:
            self.failures += 1
            raise
        return self._result(arguments, bytes(body))

    def _result(self, arguments: dict[str, Any], body: bytes) -> dict[str, Any]:
        try:
            data: Any = json.loads(body) if body.strip() else {}
        except ValueError:
            self.failures += 1
            raise HttpToolFailed(f"{self.spec.name}: the answer is not JSON") from None
        fields = {**arguments, **(data if isinstance(data, dict) else {})}
        summary = _fill(self.spec.summary, fields) if self.spec.summary else ""
        return {"response": data, "summary": summary}


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def _fill(template: str, fields: dict[str, Any]) -> str:
    """The reply template with the fields it names; one the answer lacks shows as "?"."""
    try:
        return template.format_map(_Fields(fields))
    except (ValueError, AttributeError, IndexError, KeyError):
        return template
