"""Build the agent runtime from config: seed the tools' data, load routing examples, pick
each agent's allowlisted tools. Called once by the composition root."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry

from edged.agents import portal
from edged.agents.catalog import load_catalog, seed_catalog
from edged.agents.clinic import ClinicTools, load_clinic_seed, seed_providers
from edged.agents.config import AgentsConfig, AgentSpec
from edged.agents.metrics import AgentMetrics
from edged.agents.retail import RetailTools
from edged.agents.router import Intent, Router, load_intents
from edged.agents.runtime import Agent, AgentRuntime, Toolset
from edged.agents.sessions import Sealer, SessionStore
from edged.agents.tickets import Tickets
from edged.agents.tools import Tool
from edged.audit.sink import AuditSink
from edged.errors import ConfigError
from edged.models.contract import Inference
from edged.store import Store
from edged.sync.queue import OutboxQueue

log = logging.getLogger(__name__)

RETAIL = {"check_inventory", "find_alternatives", "create_price_quote", "create_ticket"}
CLINIC = {"check_appointment_availability", "book_appointment", "access_patient_portal",
          "escalate_to_human"}


async def build_runtime(cfg: AgentsConfig, *, keys_dir: Path, store: Store,
                        models: Inference | None, audit: AuditSink, outbox: OutboxQueue,
                        registry: CollectorRegistry) -> AgentRuntime:
    sealer = await load_sealer(cfg, keys_dir)
    agents = await build_agents(cfg, keys_dir=keys_dir, store=store, outbox=outbox,
                                sealer=sealer)
    return AgentRuntime(agents, SessionStore(store, sealer, cfg.session_ttl), models, audit,
                        AgentMetrics(registry))


async def load_sealer(cfg: AgentsConfig, keys_dir: Path) -> Sealer:
    return Sealer(await asyncio.to_thread(
        portal.load_or_create_key, cfg.session_key or keys_dir / "sessions.key"))


async def build_agents(cfg: AgentsConfig, *, keys_dir: Path, store: Store,
                       outbox: OutboxQueue, sealer: Sealer) -> dict[str, Agent]:
    """Every configured agent, built whole; also used by a reload before it swaps them in."""
    tickets = Tickets(store, outbox)
    agents = {}
    for name, spec in cfg.agents.items():
        toolsets = await _toolsets(cfg, spec, keys_dir, store, tickets, sealer)
        agents[name] = await asyncio.to_thread(_agent, spec, toolsets)
    return agents


def _data_file(cfg: AgentsConfig, spec: AgentSpec, name: str) -> Path:
    if cfg.data_dir is None:
        raise ConfigError(f"agents.data_dir: agent {spec.name!r} uses tools that need seed "
                          f"data ({name})")
    return cfg.data_dir / name


async def _toolsets(cfg: AgentsConfig, spec: AgentSpec, keys_dir: Path, store: Store,
                    tickets: Tickets, sealer: Sealer) -> list[Toolset]:
    unknown = set(spec.tools) - RETAIL - CLINIC
    if unknown:
        raise ConfigError(f"agents.{spec.name}.tools: unknown tool {sorted(unknown)[0]!r} "
                          f"(known: {', '.join(sorted(RETAIL | CLINIC))})")
    sets: list[Toolset] = []
    if RETAIL & set(spec.tools):
        await seed_catalog(store, _data_file(cfg, spec, "catalog.json"))
        sets.append(RetailTools(spec, store, await load_catalog(store), tickets))
    if CLINIC & set(spec.tools):
        providers, patients = await asyncio.to_thread(
            load_clinic_seed, _data_file(cfg, spec, "clinic.json"))
        await seed_providers(store, providers)
        key = await asyncio.to_thread(portal.load_or_create_key,
                                      spec.portal_key or keys_dir / "portal.key")
        sets.append(ClinicTools(spec, store, providers, patients, tickets, key, sealer))
    return sets


def _agent(spec: AgentSpec, toolsets: list[Toolset]) -> Agent:
    allowed = {t.name: (t, ts) for ts in toolsets for t in ts.tools() if t.name in spec.tools}
    intents = load_intents(spec.examples_file) if spec.examples_file else []
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
