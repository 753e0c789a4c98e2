"""Build the agent runtime from config: seed the tools' data, load routing examples, pick
each agent's allowlisted tools. Called once by the composition root."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry

from edged.agents import portal
from edged.agents.approvals import Approvals
from edged.agents.config import AgentsConfig, AgentSpec
from edged.agents.encoder import Encoder
from edged.agents.kit import Kit, KitContext, Toolset, discover
from edged.agents.metrics import AgentMetrics
from edged.agents.router import Intent, Router, load_intents
from edged.agents.runtime import Agent, AgentRuntime
from edged.agents.sessions import Sealer, SessionStore
from edged.agents.tickets import Tickets
from edged.agents.tools import Tool
from edged.audit.sink import AuditSink
from edged.models.contract import Inference
from edged.store import Store
from edged.sync.queue import OutboxQueue

log = logging.getLogger(__name__)

class ExtraTools(Protocol):
    """Tools from outside the kits (edged/tools: MCP servers, HTTP tools)."""

    def handles(self, name: str) -> bool: ...

    def toolset(self, names: Sequence[str]) -> Toolset: ...


async def build_runtime(cfg: AgentsConfig, *, keys_dir: Path, store: Store,
                        models: Inference | None, audit: AuditSink, outbox: OutboxQueue,
                        registry: CollectorRegistry, encoder: Encoder | None = None,
                        extra: ExtraTools | None = None) -> AgentRuntime:
    """``encoder``: the sentence encoder with its vector cache (the daemon's); by default
    ``cfg.encoder`` with no disk cache."""
    encoder = encoder or Encoder(models, cfg.encoder, cfg.encoder or "", None)
    sealer = await load_sealer(cfg, keys_dir)
    agents = await build_agents(cfg, keys_dir=keys_dir, store=store, outbox=outbox,
                                sealer=sealer, extra=extra)
    approvals = Approvals(store, sealer, audit)
    await approvals.expire_leftovers()
    return AgentRuntime(agents, SessionStore(store, sealer, cfg.session_ttl), models, audit,
                        AgentMetrics(registry), encoder, approvals)


async def load_sealer(cfg: AgentsConfig, keys_dir: Path) -> Sealer:
    return Sealer(await asyncio.to_thread(
        portal.load_or_create_key, cfg.session_key or keys_dir / "sessions.key"))


async def build_agents(cfg: AgentsConfig, *, keys_dir: Path, store: Store,
                       outbox: OutboxQueue, sealer: Sealer,
                       kits: Mapping[str, Kit] | None = None,
                       extra: ExtraTools | None = None) -> dict[str, Agent]:
    """Every configured agent, built whole; also used by a reload before it swaps them in."""
    kits = discover() if kits is None else kits
    tickets = Tickets(store, outbox)
    agents = {}
    for name, spec in cfg.agents.items():
        toolsets = []
        for kit_name in spec.kits:
            ctx = KitContext(spec=spec, options=spec.options[kit_name], store=store,
                             tickets=tickets, sealer=sealer, keys_dir=keys_dir,
                             data_dir=cfg.data_dir, clock=dt.datetime.now)
            toolsets.append(await kits[kit_name].build(ctx))
        kit_tools = {n for k in spec.kits for n in kits[k].tool_names}
        outside = [n for n in spec.tools if n not in kit_tools]
        if outside and extra is not None:
            toolsets.append(extra.toolset([n for n in outside if extra.handles(n)]))
        defaults = [f for k in spec.kits if (f := kits[k].examples_file) is not None]
        agents[name] = await asyncio.to_thread(_agent, spec, toolsets, defaults)
    return agents


def _agent(spec: AgentSpec, toolsets: list[Toolset], defaults: list[Path]) -> Agent:
    """``defaults``: the kits' own routing examples, used when the agent names none."""
    allowed = {t.name: (t, ts) for ts in toolsets for t in ts.tools() if t.name in spec.tools}
    files = [spec.examples_file] if spec.examples_file else defaults
    intents = [i for f in files for i in load_intents(f)]
    intents = [i for i in intents if i.name in allowed or i.reply] or _from_keywords(allowed)

    def mask(text: str) -> str:
        for ts in toolsets:
            text = ts.mask(text)
        return text

    return Agent(spec=spec, router=Router(intents, mask), tools=allowed,
                 replies={i.name: i.reply for i in intents if i.reply}, mask=mask)


def _from_keywords(allowed: dict[str, tuple[Tool, Toolset]]) -> list[Intent]:
    """No examples file: route on each tool's description and keywords alone."""
    return [Intent(name, (tool.description, *tool.keywords), tool.keywords)
            for name, (tool, _) in allowed.items()]
