"""Tools from outside edged's kits, as agents see them: MCP servers' and HTTP tools.

``ExternalTools`` is the component (one supervisor task per MCP server, an HTTP session);
``toolset(names)`` gives an agent a ``Toolset`` over the ones it lists, so every call goes
through the runtime's allowlist, schema check, timeout and audit record like a kit's.
Arguments come from the text by each parameter's schema: a value of an ``enum``, a match of
a ``pattern``, an identifier (a word with a digit) for a parameter named like one, a number
for a numeric one; a missing one is asked for, and the answer to that question fills it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import aiohttp

from edged.agents.tools import JSON, Tool, ToolContext
from edged.tools.config import ToolsConfig
from edged.tools.mcp import McpServer, ToolFailed
from edged.tools.webtools import HttpTool

SUMMARY_CHARS = 600
FIRST_LISTING = 10.0  # seconds the daemon waits at start for the servers' first listing
_ID_NAME = re.compile(r"(?:^|_)(?:id|number|no|code|ref|sku)$")
_ID_WORD = re.compile(r"\b[A-Za-z]*[-#]?\d[\w-]*\b")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class ExternalTools:
    def __init__(self, cfg: ToolsConfig) -> None:
        self._cfg = cfg
        self.servers = {name: McpServer(spec) for name, spec in cfg.mcp.items()}
        self._http: aiohttp.ClientSession | None = None
        self.http: dict[str, HttpTool] = {}

    async def __aenter__(self) -> ExternalTools:
        self._http = aiohttp.ClientSession()
        self.http = {name: HttpTool(spec, self._http) for name, spec in self._cfg.http.items()}
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for name, server in self.servers.items():
                tg.create_task(server.run(), name=f"mcp.{name}")

    async def listed(self) -> None:
        """Until every server has been tried once (bounded), so agents start with their
        tools' schemas."""
        waits = [s.listed.wait() for s in self.servers.values()]
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits), FIRST_LISTING)

    def health(self) -> dict[str, Any]:
        return {"mcp": {n: s.health() for n, s in self.servers.items()},
                "http": {n: {"calls": t.calls, "failures": t.failures}
                         for n, t in self.http.items()},
                "degraded": any(s.state != "up" for s in self.servers.values())}

    def status_line(self) -> str:
        if not self.servers:
            return ""
        up = sum(s.state == "up" for s in self.servers.values())
        return f"mcp {up}/{len(self.servers)} up"

    def handles(self, name: str) -> bool:
        return self._cfg.knows(name)

    def toolset(self, names: Sequence[str]) -> ExternalToolset:
        return ExternalToolset([self._tool(n) for n in names])

    def _tool(self, name: str) -> Tool:
        if name in self.http:
            http = self.http[name]

            async def call_http(ctx: ToolContext, **args: Any) -> JSON:
                return await http.call(args)
            return Tool(name, http.spec.description, http.spec.parameters, (), call_http)
        server_name, _, tool_name = name.partition(".")
        server = self.servers[server_name]

        async def call_mcp(ctx: ToolContext, **args: Any) -> JSON:
            return _mcp_result(name, await server.call(tool_name, args))
        return Tool(name, server.descriptions.get(tool_name, ""), server.schema(tool_name),
                    (), call_mcp)


def _mcp_result(name: str, result: Any) -> JSON:
    text = " ".join(getattr(c, "text", "") for c in result.content or ()).strip()
    if result.is_error:
        raise ToolFailed(f"{name}: {text[:SUMMARY_CHARS] or 'the tool failed'}")
    out: JSON = {"summary": text[:SUMMARY_CHARS]}
    if result.structured_content is not None:
        out["result"] = result.structured_content
    return out


class ExternalToolset:
    """The Toolset of an agent's external tools: schema-driven argument reading."""

    def __init__(self, tools: list[Tool]) -> None:
        self._tools = {t.name: t for t in tools}

    def tools(self) -> list[Tool]:
        return list(self._tools.values())

    def extract(self, tool_name: str, text: str, state: JSON) -> JSON:
        tool = self._tools[tool_name]
        props: dict[str, Any] = tool.schema.get("properties", {})
        found: JSON = {}
        for name, schema in props.items():
            value = _read(name, schema, text)
            if value is not None:
                found[name] = value
        pending = state.get("pending") or {}
        if pending.get("tool") == tool_name:  # the answer to the question asked
            missing = [k for k in tool.schema.get("required", ())
                       if k not in pending.get("args", {}) and k not in found]
            if len(missing) == 1 and props.get(missing[0], {}).get("type") == "string":
                found[missing[0]] = text.strip().rstrip(".!?")
        return found

    def check(self, tool_name: str, args: JSON) -> bool:
        return True  # the service itself says when a value names nothing

    def remember(self, tool_name: str, args: JSON, result: JSON, state: JSON) -> None:
        return None

    def mask(self, text: str) -> str:
        return text

    def mentions(self, text: str) -> bool:
        return bool(_ID_WORD.search(text))

    def question(self, tool_name: str, slot: str) -> str | None:
        schema = self._tools[tool_name].schema.get("properties", {}).get(slot, {})
        what = schema.get("description") or slot.replace("_", " ")
        return f"What is the {what}?"


def _read(name: str, schema: dict[str, Any], text: str) -> Any:
    kind = schema.get("type")
    if "enum" in schema:
        lowered = text.lower()
        return next((e for e in schema["enum"] if str(e).lower() in lowered), None)
    if kind == "string" and isinstance(schema.get("pattern"), str):
        try:
            m = re.search(schema["pattern"].strip("^$"), text)
        except re.error:
            return None
        return m.group(0) if m else None
    if kind == "string" and _ID_NAME.search(name.lower()):
        m = _ID_WORD.search(text)
        return m.group(0) if m else None
    if kind in ("integer", "number"):
        numbers = _NUMBER.findall(text)
        if len(numbers) == 1:
            return int(float(numbers[0])) if kind == "integer" else float(numbers[0])
    return None
