"""Config of the ``[agents.*]`` sections."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edged.tomlreader import Table


@dataclass(frozen=True)
class AgentSpec:
    name: str
    description: str
    instructions: str
    model: str
    tools: tuple[str, ...]  # allowlist
    allowed_groups: tuple[str, ...]  # empty: every client may use it
    max_steps: int
    tool_timeout: float
    phi: bool  # protected health information: encrypted sessions, nothing leaves the box
    examples_file: Path | None  # routing examples (intent -> utterances)


@dataclass(frozen=True)
class AgentsConfig:
    agents: dict[str, AgentSpec]
    data_dir: Path | None  # seed data (catalog, providers) for the tools
    session_ttl: float


def _parse_agent(name: str, t: Table) -> AgentSpec:
    spec = AgentSpec(
        name=name,
        description=t.str("description", ""),
        instructions=t.str("instructions", ""),
        model=t.str("model"),
        tools=t.str_list("tools", ()),
        allowed_groups=t.str_list("allowed_groups", ()),
        max_steps=t.int("max_steps", 4, min=1, max=32),
        tool_timeout=t.duration("tool_timeout", 10.0),
        phi=t.bool("phi", False),
        examples_file=t.path("examples_file", None),
    )
    t.done()
    return spec


def parse_agents(t: Table) -> AgentsConfig:
    data_dir = t.path("data_dir", None)
    ttl = t.duration("session_ttl", 3600.0)
    agents = {}
    for name in list(t.keys()):
        if name in ("data_dir", "session_ttl"):
            continue
        agents[name] = _parse_agent(name, t.table(name))
    t.done()
    return AgentsConfig(agents=agents, data_dir=data_dir, session_ttl=ttl)
