"""Config of the ``[mcp.*]`` (MCP tool servers) and ``[tools.*]`` (HTTP tools) sections.

An agent lists their tools in ``tools`` like a kit's: ``"<server>.<tool>"`` for a tool of an
MCP server (its tools are known only once the server lists them), the section's name for an
HTTP tool. See docs/agents.md ("Tools from MCP servers and HTTP services").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edged.errors import ConfigError
from edged.tomlreader import Table

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
_FIELD = re.compile(r"\{(\w+)\}")
MAX_RESPONSE = 1024 * 1024
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class McpSpec:
    name: str
    command: tuple[str, ...] | None  # a server edged starts and keeps (stdio), or
    url: str | None  # one that runs elsewhere (Streamable HTTP)
    env: dict[str, str]
    headers_file: Path | None  # "Name: value" lines sent with every request (0600)
    timeout: float  # per call


@dataclass(frozen=True)
class HttpToolSpec:
    name: str
    description: str
    url: str  # {x} is replaced by the argument x, URL-encoded
    method: str
    parameters: dict[str, Any]  # JSON schema of the arguments (an object)
    summary: str  # reply template over the arguments and the JSON response's fields
    headers_file: Path | None
    timeout: float
    max_bytes: int

    @property
    def host(self) -> tuple[str, str, int | None]:
        parts = urlsplit(self.url)
        return parts.scheme, parts.hostname or "", parts.port


@dataclass(frozen=True)
class ToolsConfig:
    mcp: dict[str, McpSpec]
    http: dict[str, HttpToolSpec]

    def knows(self, name: str) -> bool:
        """Could ``name`` be one of these tools? An MCP server's tools are checked against
        its listing once it runs."""
        server, dot, _tool = name.partition(".")
        return name in self.http or (bool(dot) and server in self.mcp)


def parse_tools(mcp: Table, tools: Table) -> ToolsConfig:
    servers = {name: _parse_mcp(name, mcp.table(name)) for name in list(mcp.keys())}
    http = {name: _parse_http(name, tools.table(name)) for name in list(tools.keys())}
    mcp.done()
    tools.done()
    return ToolsConfig(servers, http)


def _name(t: Table, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{t.key('')[:-1]}: a name is lowercase letters, digits, _ and - "
                          "(it becomes part of tool names)")


def _parse_mcp(name: str, t: Table) -> McpSpec:
    _name(t, name)
    command = t.str_list("command", ()) or None
    url = t.str("url", None)
    if (command is None) == (url is None):
        raise ConfigError(f"{t.key('command')}: give exactly one of command (a server edged "
                          "starts) or url (one that runs elsewhere)")
    if url is not None:
        _check_url(t, "url", url)
    env = t.raw("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ConfigError(f"{t.key('env')}: expected a table of NAME = \"value\"")
    spec = McpSpec(name, tuple(command) if command else None, url, dict(env),
                   t.path("headers_file", None), t.duration("timeout", 10.0))
    t.done()
    if spec.timeout <= 0:
        raise ConfigError(f"{t.key('timeout')}: must be more than 0s")
    return spec


def _check_url(t: Table, key: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{t.key(key)}: expected an http:// or https:// URL, got {url!r}")
    if "{" in parts.netloc:
        raise ConfigError(f"{t.key(key)}: the host may not come from the arguments")


def _parse_http(name: str, t: Table) -> HttpToolSpec:
    _name(t, name)
    url = t.str("url")
    _check_url(t, "url", url)
    schema_path = t.path("parameters", None)
    parameters: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
    if schema_path is not None:
        try:
            parameters = json.loads(schema_path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{t.key('parameters')}: cannot read a JSON schema from "
                              f"{schema_path}: {e}") from None
        if not isinstance(parameters, dict) or parameters.get("type") != "object" \
                or not isinstance(parameters.get("properties", {}), dict):
            raise ConfigError(f"{t.key('parameters')}: {schema_path} must be a JSON schema "
                              'of type "object" with "properties"')
        parameters.setdefault("required", [])
    missing = sorted(set(_FIELD.findall(url)) - set(parameters.get("properties", {})))
    if missing:
        raise ConfigError(f"{t.key('url')}: {{{missing[0]}}} is not one of the parameters")
    spec = HttpToolSpec(
        name=name, description=t.str("description"), url=url,
        method=t.choice("method", METHODS, "GET"), parameters=parameters,
        summary=t.str("summary", ""), headers_file=t.path("headers_file", None),
        timeout=t.duration("timeout", 5.0),
        max_bytes=t.int("max_response_bytes", MAX_RESPONSE, min=1024, max=64 * MAX_RESPONSE))
    t.done()
    if spec.timeout <= 0:
        raise ConfigError(f"{t.key('timeout')}: must be more than 0s")
    return spec
