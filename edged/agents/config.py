"""Config of the ``[agents.*]`` sections."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from edged.errors import ConfigError
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
    embeddings: bool  # route with the model's embeddings as well as words
    route_threshold: float  # below it the agent asks to rephrase, then hands off
    scope_threshold: float  # encoder cosine to the nearest example below which: out of scope
    out_of_scope_reply: str  # what to say then ("" = a reply made from the agent's tools)
    model_slots: bool  # ask the model (grammar-constrained JSON) when extraction falls short
    model_reply: bool  # let the model write the reply (checked; a template otherwise)
    reply_max_tokens: int
    kits: tuple[str, ...]  # the kits whose tools this agent uses
    options: Mapping[str, Any]  # kit name -> that kit's parsed options for this agent
    portal_key: Path | None  # HMAC key of signed portal tokens (default <keys>/portal.key)
    # tool -> "staff": the call waits for a person's decision
    approval: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    approver_groups: tuple[str, ...] = ()  # who may decide (besides admins)
    approval_timeout: float = 300.0  # a request not decided by then is refused
    planner: str = "router"  # router | model (the chat model proposes the tool call)
    kind: str = "agent"  # agent | front (a front desk that hands each turn to a member)
    members: tuple[str, ...] = ()  # a front desk's agents
    # "always": escalation_model (a bigger one, local or remote) writes every reply;
    # "low_confidence": it answers the turns the router cannot place. Never remote for a
    # phi agent (edged/config.py).
    escalate: str = "never"
    escalation_model: str | None = None


@dataclass(frozen=True)
class AgentsConfig:
    agents: dict[str, AgentSpec]
    encoder: str | None  # model alias of the sentence encoder (None: understanding by words)
    data_dir: Path | None  # seed data (catalog, providers) for the tools
    session_ttl: float
    session_key: Path | None  # AES-256 key of PHI sessions (default <keys>/sessions.key)


def _parse_agent(name: str, t: Table, kits: Mapping[str, KitOptions],
                 external: Callable[[str], bool]) -> AgentSpec:
    kind = t.choice("kind", ("agent", "front"), "agent")
    tools = t.str_list("tools", ())
    if kind == "front" and tools:
        raise ConfigError(f"{t.key('tools')}: a front desk has no tools of its own; its "
                          "members' tools are used through them")
    known = {n for kit in kits.values() for n in kit.tool_names}
    unknown = sorted(n for n in set(tools) - known if not external(n))
    if unknown:
        raise ConfigError(f"{t.key('tools')}: unknown tool {unknown[0]!r} (known: "
                          f"{', '.join(sorted(known))}, and <server>.<tool> of an [mcp.*] "
                          "server or the name of a [tools.*] HTTP tool)")
    used = tuple(k for k, kit in kits.items() if kit.tool_names & set(tools))
    spec = AgentSpec(
        name=name,
        description=t.str("description", ""),
        instructions=t.str("instructions", ""),
        model=t.str("model", "") if kind == "front" else t.str("model"),
        tools=tools,
        allowed_groups=t.str_list("allowed_groups", ()),
        max_steps=t.int("max_steps", 4, min=1, max=32),
        tool_timeout=t.duration("tool_timeout", 10.0),
        phi=t.bool("phi", False),
        examples_file=t.path("examples_file", None),
        embeddings=t.bool("embeddings", True),
        route_threshold=t.float("route_threshold", ROUTE_THRESHOLD, min=0, max=1),
        scope_threshold=t.float("scope_threshold", SCOPE_THRESHOLD, min=-1, max=1),
        out_of_scope_reply=t.str("out_of_scope_reply", ""),
        model_slots=t.bool("model_slots", False),  # measured: slower and rarely right
        model_reply=t.bool("model_reply", False),  # measured: no better than templates
        reply_max_tokens=t.int("reply_max_tokens", 48, min=8, max=512),
        portal_key=t.path("portal_key", None),
        escalate=t.choice("escalate", ESCALATE, "never"),
        escalation_model=t.str("escalation_model", None),
        kits=used,
        options=MappingProxyType({k: kits[k].parse_options(t) for k in used}),
        approval=MappingProxyType(_approval(t, tools)),
        approver_groups=t.str_list("approver_groups", ()),
        approval_timeout=t.duration("approval_timeout", 300.0),
        planner=t.choice("planner", ("router", "model"), "router"),
        kind=kind,
        members=t.str_list("members", ()) if kind == "front" else (),
    )
    if kind == "front" and not spec.members:
        raise ConfigError(f"{t.key('members')}: a front desk needs its member agents")
    t.done()
    if spec.escalate != "never" and spec.escalation_model is None:
        raise ConfigError(f"{t.key('escalation_model')}: escalate = {spec.escalate!r} needs "
                          "the alias of the model to escalate to")
    if spec.examples_file is not None and not spec.examples_file.is_file():
        raise ConfigError(f"{t.key('examples_file')}: {spec.examples_file} is not a file")
    return spec


def _approval(t: Table, tools: tuple[str, ...]) -> dict[str, str]:
    raw = t.raw("approval", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{t.key('approval')}: expected a table of tool = \"staff\"")
    for name, who in raw.items():
        if name not in tools:
            raise ConfigError(f"{t.key('approval')}.{name}: not one of this agent's tools")
        if who != "staff":
            raise ConfigError(f"{t.key('approval')}.{name}: expected \"staff\", got {who!r}")
    return dict(raw)


ESCALATE = ("never", "low_confidence", "always")
_TOP_KEYS = ("data_dir", "session_ttl", "session_key", "encoder")


# Calibrated on the dev split of the blind sets (tests/agents/blind/) with the bundled
# encoder; see docs/agents.md. Both are per agent in config.
ROUTE_THRESHOLD = 0.22
SCOPE_THRESHOLD = 0.30


class KitOptions(Protocol):
    """The part of a kit that config parsing needs (see edged/agents/kit.py)."""

    tool_names: frozenset[str]

    def parse_options(self, t: Table) -> Any: ...


def parse_agents(t: Table, kits: Mapping[str, KitOptions],
                 external: Callable[[str], bool] = lambda _name: False) -> AgentsConfig:
    """``external``: is a tool name one of the configured MCP or HTTP tools?"""
    data_dir = t.path("data_dir", None)
    # Checked here, before the daemon creates any state: a copied config whose relative
    # paths no longer reach the seed data must fail before a database or keys appear.
    if data_dir is not None and not data_dir.is_dir():
        raise ConfigError(f"{t.key('data_dir')}: {data_dir} is not a folder")
    ttl = t.duration("session_ttl", 3600.0)
    session_key = t.path("session_key", None)
    encoder = t.str("encoder", None)
    agents = {}
    for name in list(t.keys()):
        if name in _TOP_KEYS:
            continue
        agents[name] = _parse_agent(name, t.table(name), kits, external)
    t.done()
    for name, spec in agents.items():
        for member in spec.members:
            if agents.get(member) is None or agents[member].kind == "front":
                raise ConfigError(f"agents.{name}.members: {member!r} is not an agent of this "
                                  "config (a front desk's members are ordinary agents)")
    return AgentsConfig(agents=agents, encoder=encoder, data_dir=data_dir, session_ttl=ttl,
                        session_key=session_key)
