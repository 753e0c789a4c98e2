"""MCP tool servers (Model Context Protocol, the reference ``mcp`` SDK, v2 API).

Each configured server has a supervisor task: it connects (starting the server's process
for a ``command``, over Streamable HTTP for a ``url``), lists the tools, and then holds the
connection; when a call finds it broken, or a periodic listing fails, it reconnects with
backoff (1 s doubling to 30 s). A call while the server is down fails at once with a clear
error, never a hang. The schema of each tool is the server's latest listing: a tool's
``schema`` dict is updated in place when the server lists it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from edged.errors import EdgedError, Unavailable
from edged.tools.config import McpSpec

log = logging.getLogger(__name__)

BACKOFF = (1.0, 30.0)  # first retry, longest wait
PROBE_EVERY = 30.0  # seconds between listings that check a quiet connection
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}, "required": []}


class ToolFailed(EdgedError):
    """The server ran the tool and it failed, or its answer broke the tool's own schema."""

    code = "tool_failed"
    status = 502


class McpServer:
    def __init__(self, spec: McpSpec) -> None:
        self.spec = spec
        self.state = "starting"  # starting | up | down
        self.error: str | None = None
        self.restarts = 0
        self.descriptions: dict[str, str] = {}
        self._schemas: dict[str, dict[str, Any]] = {}  # tool -> its (shared) schema dict
        self._client: Any = None
        self._broken = asyncio.Event()
        self.listed = asyncio.Event()  # set after the first attempt, listed or not

    def schema(self, tool: str) -> dict[str, Any]:
        """The tool's argument schema; the same dict, updated at each listing."""
        return self._schemas.setdefault(tool, {**EMPTY_SCHEMA})

    def has(self, tool: str) -> bool:
        return tool in self.descriptions

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "tools": len(self.descriptions),
                               "restarts": self.restarts}
        if self.error:
            out["error"] = self.error
        return out

    async def run(self) -> None:
        delay = BACKOFF[0]
        while True:
            started = time.monotonic()
            try:
                await self._connected()
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                self._down(e)
            if time.monotonic() - started > PROBE_EVERY:
                delay = BACKOFF[0]  # it stayed up a while: start the backoff over
            log.info("mcp.%s: reconnecting in %.0fs", self.spec.name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])
            self.restarts += 1

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """The tool's ``CallToolResult``; raises ``Unavailable`` while the server is down and
        ``ToolFailed`` for a failed call."""
        from mcp.shared.exceptions import MCPError

        client = self._client
        if client is None or self.state != "up":
            raise Unavailable(f"the tool server {self.spec.name!r} is not running "
                              f"({self.error or 'starting'}); it is being restarted, try "
                              "again shortly", code="tool_server_down")
        try:
            return await client.call_tool(tool, arguments,
                                          read_timeout_seconds=self.spec.timeout)
        except MCPError as e:
            if "timed out" in str(e):
                raise TimeoutError from None
            self._broken.set()  # a closed connection: the supervisor reconnects
            raise Unavailable(f"the tool server {self.spec.name!r} failed during the call "
                              f"({e}); it is being restarted", code="tool_server_down") from None
        except RuntimeError as e:  # the SDK's check of the result against its output schema
            raise ToolFailed(f"{self.spec.name}.{tool} answered with a result that does not "
                             f"fit its schema: {str(e).splitlines()[0]}") from None

    async def _connected(self) -> None:
        from mcp import Client

        async with Client(self._transport(), read_timeout_seconds=self.spec.timeout) as client:
            await self._list(client)
            self._client = client
            self.state, self.error = "up", None
            log.info("mcp.%s: up, %d tools", self.spec.name, len(self.descriptions))
            while True:
                self._broken.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._broken.wait(), PROBE_EVERY)
                if self._broken.is_set():
                    raise ConnectionError("the connection broke during a call")
                await asyncio.wait_for(self._list(client), self.spec.timeout)

    async def _list(self, client: Any) -> None:
        listing = await client.list_tools(cache_mode="bypass")
        descriptions = {}
        for tool in listing.tools:
            schema = dict(tool.input_schema or EMPTY_SCHEMA)
            schema.setdefault("properties", {})
            schema.setdefault("required", [])
            shared = self.schema(tool.name)
            shared.clear()
            shared.update(schema)
            descriptions[tool.name] = tool.description or ""
        self.descriptions = descriptions
        self.listed.set()

    def _down(self, error: BaseException) -> None:
        self._client = None
        self.state = "down"
        self.error = _describe(error)
        self.listed.set()
        log.warning("mcp.%s: down: %s", self.spec.name, self.error)

    def _transport(self) -> Any:
        spec = self.spec
        if spec.command is not None:
            from mcp.client.stdio import StdioServerParameters
            return StdioServerParameters(command=spec.command[0], args=list(spec.command[1:]),
                                         env=spec.env or None)
        import httpx2
        from mcp.client.streamable_http import streamable_http_client
        assert spec.url is not None
        headers = read_headers(spec.headers_file) if spec.headers_file else {}
        http = httpx2.AsyncClient(headers=headers, timeout=spec.timeout)
        return streamable_http_client(spec.url, http_client=http)


def read_headers(path: Path) -> dict[str, str]:
    """``Name: value`` lines of a secrets file only its owner may read (0600)."""
    try:
        mode = path.stat().st_mode & 0o077
        text = path.read_text()
    except OSError as e:
        raise Unavailable(f"{path}: cannot read the headers file: {e.strerror}",
                          code="headers_file") from None
    if mode:
        raise Unavailable(f"{path}: a headers file holds secrets; make it 0600",
                          code="headers_file")
    headers = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip() and not line.lstrip().startswith("#"):
            headers[name.strip()] = value.strip()
    return headers


def _describe(error: BaseException) -> str:
    """One line for a failure the SDK may wrap in exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]
