"""The composition root: builds every component, runs them in one TaskGroup, shuts down
in order.

Phases: claim the socket and the state folder; open resources (AsyncExitStack, closed in
reverse); start component tasks; answer on the socket; tell systemd READY; wait for the
stop event. Then drain the API within the grace period, cancel the component tasks and
close the resources (flushing the audit log and the outbox). If a component crashes, the
TaskGroup cancels the rest and ``serve`` raises, so the process exits non-zero and systemd
restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from typing import Any

from edged.agents import tables as agent_tables
from edged.agents.assemble import build_runtime as build_agent_runtime
from edged.agents.encoder import Encoder
from edged.agents.http import AgentRoutes
from edged.agents.reload import AgentsReloader
from edged.api.app import ApiState, RequestAudit, RouteProvider, build_app
from edged.api.connection import Limits
from edged.api.peer import RoleResolver
from edged.api.server import ApiServer
from edged.api.system import SystemRoutes
from edged.audit.http import AuditRoutes, RequestAuditor
from edged.audit.log import AuditLog, DisabledAudit, open_audit
from edged.audit.sink import AuditSink
from edged.config import Config
from edged.metrics import Metrics
from edged.models.catalog import Catalog
from edged.models.contract import Inference
from edged.models.http import ModelRoutes
from edged.models.hybrid import HybridInference
from edged.models.llama_backend import LlamaBackend
from edged.models.manager import ModelManager
from edged.models.memory import budget_bytes, read_memory_facts
from edged.models.onnx_backend import OnnxBackend
from edged.models.power import PowerMonitor
from edged.models.remotes import RemoteModels
from edged.notify import Notifier
from edged.remote.component import RemoteComponent
from edged.remote.http import RemoteRoutes
from edged.remote.reload import ReloadTarget
from edged.roles import HealthSource
from edged.statelock import StateLock
from edged.store import Schema, Store
from edged.sync import outbox as sync_outbox
from edged.sync.http import SyncRoutes
from edged.sync.queue import OutboxQueue
from edged.sync.service import SyncService
from edged.tools.external import ExternalTools

log = logging.getLogger(__name__)

EXIT_FORCED = 70  # EX_SOFTWARE: stopped by a second signal before the drain finished


BEFORE_READY_S = 30.0  # under systemd's TimeoutStartSec (90 s) with room for the rest


@dataclass
class Wiring:
    """What the build phase hands to the run phase."""

    background: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = field(
        default_factory=list)
    health: dict[str, HealthSource] = field(default_factory=dict)
    routes: list[RouteProvider] = field(default_factory=list)
    status: list[Callable[[], str]] = field(default_factory=list)
    audit: RequestAudit | None = None  # the audit records of each API request
    # components that take a new config in place (a pushed config reloads them)
    reloadable: list[ReloadTarget] = field(default_factory=list)
    # what must be ready before the socket answers (the agents' example vectors)
    before_ready: list[Callable[[], Coroutine[Any, Any, Any]]] = field(default_factory=list)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stop = asyncio.Event()
        self.metrics = Metrics()

    def schemas(self) -> list[Schema]:
        """Each component's tables, migrated at open."""
        return [sync_outbox.SCHEMA, RemoteComponent.schema, agent_tables.SCHEMA]

    async def _build(self, stack: AsyncExitStack, store: Store) -> Wiring:
        """Every component, built with its config slice and its collaborators, in dependency
        order: audit, sync (outbox), models, agents, remote. Resources are entered into
        ``stack`` so they close in reverse."""
        cfg = self.config
        wiring = Wiring()
        # -- audit (edged/audit): `audit`, an AuditSink. Its checkpoints queue in the outbox,
        # so the outbox (which needs nothing else) is built first.
        outbox = sync_outbox.Outbox(store, cfg.sync.max_bytes, self.metrics.registry,
                                    reserved_bytes=cfg.sync.reserved_bytes)
        audit: AuditSink = DisabledAudit()
        if cfg.audit.enabled:
            audit = await self._open_audit(stack, wiring, outbox)
        # -- sync (edged/sync): `outbox`, an OutboxQueue; the uploader
        sync = await stack.enter_async_context(SyncService(
            cfg.sync, outbox, device_id=cfg.daemon.device_id, keys_dir=cfg.daemon.keys_dir,
            registry=self.metrics.registry, audit=audit))
        wiring.background.append(("sync", sync.run))
        wiring.health["sync"] = sync.health
        wiring.routes.append(SyncRoutes(sync))
        wiring.status.append(sync.status_line)
        wiring.reloadable.append(ReloadTarget("sync", ("sync",), sync))
        wiring.health["store"] = store.health  # a corrupt database moved aside (edged/salvage.py)
        # -- models (edged/models): `models`, an Inference; the manager and its API routes
        models, hybrid = await self._build_models(wiring, audit)
        # -- tools (edged/tools): MCP tool servers and HTTP tools, for the agents
        tools = await stack.enter_async_context(ExternalTools(cfg.tools))
        wiring.background.append(("tools", tools.run))
        wiring.health["tools"] = tools.health
        wiring.status.append(tools.status_line)
        wiring.before_ready.append(tools.listed)
        # -- agents (edged/agents): the agent runtime and its API routes; local and remote
        # aliases alike (HybridInference refuses remote ones to a phi agent)
        agents = await build_agent_runtime(
            cfg.agents, keys_dir=cfg.daemon.keys_dir, store=store, models=hybrid, audit=audit,
            outbox=outbox, registry=self.metrics.registry, encoder=self._encoder(hybrid),
            extra=tools)
        wiring.routes.append(AgentRoutes(agents))
        wiring.health["agents"] = agents.health
        wiring.background.append(("agents", agents.run))
        wiring.before_ready.append(agents.warmed.wait)
        wiring.reloadable.append(ReloadTarget("agents", ("agents",), AgentsReloader(
            agents, cfg.agents, keys_dir=cfg.daemon.keys_dir, store=store, outbox=outbox,
            extra=tools)))
        # -- remote (edged/remote): config bundles, pull, apply and roll back
        remote = RemoteComponent(cfg, store, targets=wiring.reloadable, health=wiring.health,
                                 audit=audit, outbox=outbox, inference=models)
        wiring.background.append(("remote", remote.run))
        wiring.health["remote"] = remote.health
        wiring.routes.append(RemoteRoutes(remote))
        del cfg
        return wiring

    def _encoder(self, models: Inference) -> Encoder:
        """The agents' sentence encoder: the alias ``agents.encoder`` names, its example
        vectors cached under the model cache by the weights' hash."""
        alias = self.config.agents.encoder
        spec = self.config.models.catalog.get(alias) if alias else None
        identity = f"{alias}:{spec.sha256 if spec else ''}"
        return Encoder(models, alias, identity, self.config.models.cache_dir / "vectors")

    async def _build_models(self, wiring: Wiring, audit: AuditSink
                            ) -> tuple[ModelManager, HybridInference]:
        cfg = self.config.models
        power = PowerMonitor(cfg.power, self.metrics.registry, audit)
        await power.refresh()  # the first load and /health at READY already see the profile
        facts = await asyncio.to_thread(read_memory_facts, cfg.power.cgroup_root)
        models = ModelManager(
            cfg, catalog=Catalog(cfg),
            backends={"gguf": LlamaBackend(), "onnx": OnnxBackend()},
            registry=self.metrics.registry, budget_bytes=budget_bytes(cfg.budget, facts),
            audit=audit, power=power)
        wiring.background += [("power", power.run), ("models", models.run)]
        wiring.health["models"] = models.health
        wiring.reloadable.append(ReloadTarget("models", ("models", "budget"), models))
        wiring.reloadable.append(ReloadTarget("power", ("power",), power))
        wiring.health["power"] = power.health
        remotes = RemoteModels(cfg.remote, registry=self.metrics.registry, audit=audit,
                               log_prompts=self.config.audit.log_prompts)
        wiring.background.append(("remote-models", remotes.run))
        wiring.reloadable.append(ReloadTarget("remote-models", ("models",), remotes))
        wiring.health["remote_models"] = remotes.health
        wiring.routes.append(ModelRoutes(models, remotes))
        wiring.status.append(models.status_line)
        if cfg.remote:
            wiring.status.append(remotes.status_line)
        return models, HybridInference(models, remotes)

    async def _open_audit(self, stack: AsyncExitStack, wiring: Wiring,
                          outbox: OutboxQueue) -> AuditLog:
        cfg = self.config
        audit = await stack.enter_async_context(await open_audit(
            cfg.audit, state_dir=cfg.daemon.state_dir, keys_dir=cfg.daemon.keys_dir,
            device_id=cfg.daemon.device_id, outbox=outbox, registry=self.metrics.registry))
        wiring.background.append(("audit-checkpoints", audit.run))
        wiring.health["audit"] = audit.health
        wiring.status.append(audit.status)
        wiring.routes.append(AuditRoutes(audit))
        wiring.audit = RequestAuditor(audit, cfg.audit)
        return audit

    def _on_signal(self, sig: signal.Signals) -> None:
        """The first SIGTERM/SIGINT drains; a second one while draining exits at once (what
        was acknowledged is already durable: the database and the audit log are synced
        before a request is answered)."""
        if not self.stop.is_set():
            self.stop.set()
            return
        log.warning("%s again while stopping: exiting now, without waiting for the "
                    "requests in flight", sig.name)
        logging.shutdown()
        os._exit(EXIT_FORCED)

    async def serve(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        state = ApiState()
        wiring = Wiring()
        with ExitStack() as claims:
            limits = Limits(cfg.daemon.read_timeout, cfg.daemon.idle_timeout,
                            cfg.daemon.max_connections)
            server = ApiServer(None, state, cfg.daemon.socket, cfg.daemon.socket_mode, limits)
            server.claim()
            claims.callback(server.release)
            claims.enter_context(StateLock(cfg.daemon.state_dir))
            async with AsyncExitStack() as stack:
                store = await stack.enter_async_context(
                    Store(cfg.daemon.state_dir / "edged.db", self.schemas()))
                wiring = await self._build(stack, store)
                wiring.routes.insert(0, SystemRoutes(self.metrics, wiring.health))
                stack.push_async_callback(server.close)  # also when a component crashes
                server.app = build_app(
                    resolver=RoleResolver(cfg.daemon.admin_groups, cfg.daemon.client_groups,
                                          owner_is_admin=cfg.daemon.owner_is_admin),
                    metrics=self.metrics, max_body=cfg.daemon.max_body_bytes, state=state,
                    providers=wiring.routes, audit=wiring.audit,
                    read_timeout=cfg.daemon.read_timeout)
                await self._run(server, wiring)
        log.info("edged stopped")

    async def _before_ready(self, wiring: Wiring) -> None:
        """Let components finish what the first request would otherwise wait for (the
        agents' example vectors: the first turn costs what any turn does), within a bound:
        a slow start is logged, never a hang."""
        async def all_ready() -> None:
            for wait in wiring.before_ready:
                await wait()

        ready = asyncio.ensure_future(all_ready())
        stopped = asyncio.ensure_future(self.stop.wait())
        done, _ = await asyncio.wait({ready, stopped}, timeout=BEFORE_READY_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in (ready, stopped):
            task.cancel()
        if not done:
            log.warning("start: still warming up after %.0fs; serving anyway", BEFORE_READY_S)

    async def _run(self, server: ApiServer, wiring: Wiring) -> None:
        notifier = Notifier(lambda: "; ".join(s() for s in wiring.status) or "serving")
        tasks: list[asyncio.Task[None]] = []
        async with asyncio.TaskGroup() as tg:
            for name, start in wiring.background:
                tasks.append(tg.create_task(start(), name=name))
            tasks.append(tg.create_task(notifier.run(self.stop), name="watchdog"))
            await self._before_ready(wiring)
            await server.start()
            self.metrics.up.set(1)
            notifier.ready()
            log.info("edged ready on %s", self.config.daemon.socket)
            await self.stop.wait()
            log.info("stopping: draining requests (grace %.0fs)", self.config.daemon.grace_period)
            notifier.stopping()
            self.metrics.up.set(0)
            await server.drain(self.config.daemon.grace_period)
            for task in tasks:
                task.cancel()
