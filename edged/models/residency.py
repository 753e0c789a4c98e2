"""Which models are loaded: loads them on demand under the memory budget, unloads idle
ones, takes a new catalog and budget in place.

A load itself (sizing, estimate, worker, measured cost) is ``Loader``'s job, making room
for it ``Eviction``'s; idle unloads run on ``IdleTimers``. Who may use a loaded model, and
when, is ``Admission``'s; this class only counts who holds one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from edged.audit.sink import AuditSink
from edged.errors import Conflict
from edged.models.backend import Backend
from edged.models.budget import Ledger
from edged.models.catalog import Catalog
from edged.models.config import ModelsConfig, ModelSpec, ProfileConfig
from edged.models.eviction import Eviction
from edged.models.idle import IdleTimers
from edged.models.loader import Loader
from edged.models.memory import budget_bytes, read_memory_facts
from edged.models.metrics import ModelMetrics
from edged.models.power import PowerMonitor
from edged.models.resident import Resident, audit_event

log = logging.getLogger(__name__)

_NO_PROFILE = ProfileConfig(threads=None, idle_unload=None, max_loaded=None,
                            prefer_smaller=False)


class Residency:
    def __init__(self, cfg: ModelsConfig, *, catalog: Catalog, backends: Mapping[str, Backend],
                 metrics: ModelMetrics, budget_bytes: int, audit: AuditSink | None = None,
                 power: PowerMonitor | None = None) -> None:
        self._cfg = cfg
        self._catalog = catalog
        self._metrics = metrics
        self._audit = audit
        self._power = power
        self._slots = {alias: Resident(spec) for alias, spec in cfg.catalog.items()}
        self._ledger = Ledger(budget_bytes)
        self._generation = 0  # counts changes of the loaded set, for /admin/ps?wait
        self._moved = asyncio.Event()
        self._idle: IdleTimers[Resident] = IdleTimers(self._idle_expired)
        self._eviction = Eviction(self._ledger, residents=lambda: self._slots.values(),
                                  unload=self._unload, settings=self.settings,
                                  metrics=metrics, audit=audit)
        self._loader = Loader(self._ledger, backends=backends, eviction=self._eviction,
                              metrics=metrics, settings=self.settings,
                              profile_name=self.profile_name, audit=audit)
        self._tasks: set[asyncio.Task[None]] = set()
        self._metrics.show_budget(self._ledger)

    # -- what callers see ----------------------------------------------------------------

    def aliases(self) -> Sequence[str]:
        return list(self._slots)

    def spec(self, alias: str) -> ModelSpec:
        """The config of ``alias`` (404 naming the known aliases)."""
        return self._catalog.spec(alias)

    def resident(self, alias: str) -> Resident:
        return self._slots[self._catalog.spec(alias).alias]

    def settings(self) -> ProfileConfig:
        """The power profile's settings now (no overrides without a power monitor)."""
        return self._power.settings if self._power is not None else _NO_PROFILE

    def profile_name(self) -> str:
        return self._power.profile if self._power is not None else "ac"

    def loaded(self) -> list[str]:
        return [a for a, s in self._slots.items() if s.state == "loaded"]

    def ps(self) -> dict[str, Any]:
        loaded = [self.describe(s) for s in self._slots.values() if s.state != "unloaded"]
        return {"models": loaded, "generation": self._generation, **self.budget_view()}

    async def wait_change(self, generation: int) -> None:
        """Return once the loaded set moved past ``generation``."""
        while self._generation == generation:
            await self._moved.wait()

    def describe(self, slot: Resident) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        alias = slot.spec.alias
        idle = now - slot.last_used if slot.state == "loaded" and not slot.active else 0.0
        return {
            "model": alias, "state": slot.state, "pinned": slot.pinned,
            "bytes": self._ledger.cost_of(alias), "estimated_bytes": slot.estimated,
            "measured_bytes": slot.measured, "idle_seconds": round(idle, 1),
            "in_flight": slot.active, "queue_depth": slot.worker.depth() if slot.worker else 0,
            "running": slot.worker.sequences() if slot.worker else 0,
            "cached_prefixes": slot.worker.cached_prefixes() if slot.worker else 0,
            "parallel": slot.parallel,
            "threads": slot.threads, "load_seconds": round(slot.load_seconds, 3),
        }

    def budget_view(self) -> dict[str, Any]:
        return {"budget_bytes": self._ledger.total, "used_bytes": self._ledger.used(),
                "free_bytes": self._ledger.free(), "profile": self.profile_name()}

    async def catalog_view(self) -> list[dict[str, Any]]:
        return [await self._catalog_item(s) for s in self._slots.values()]

    async def catalog_entry(self, alias: str) -> dict[str, Any]:
        return await self._catalog_item(self.resident(alias))

    # -- holding, pinning, unloading -----------------------------------------------------

    def hold(self, slot: Resident) -> None:
        """A request waits for or uses ``slot``: it is not idle, nor evicted, until
        ``release``."""
        slot.active += 1
        self._idle.cancel(slot)

    def release(self, slot: Resident) -> None:
        slot.active -= 1
        slot.last_used = asyncio.get_running_loop().time()
        if slot.active == 0:
            self._eviction.freed()
            if slot.state == "loaded" and not slot.pinned:
                self._idle.arm(slot, slot.last_used, self._idle_timeout())

    def keep(self, slot: Resident, *, pin: bool) -> None:
        """An admin load: ``pin`` keeps it loaded (never evicted, never idle-unloaded)."""
        if pin:
            slot.pinned = True
        self._bump()

    async def unload(self, alias: str) -> dict[str, Any]:
        """The admin's unload: unpins; refuses (409) while requests are in flight."""
        slot = self.resident(alias)
        slot.pinned = False
        if slot.state == "unloaded":
            return self.describe(slot)
        if slot.active:
            raise Conflict(f"model {alias!r} has {slot.active} requests in flight; it will "
                           "unload when idle", code="model_busy")
        if slot.transition is not None:
            await asyncio.shield(slot.transition)
        await self._unload(slot, "admin")
        return self.describe(slot)

    async def reload(self, cfg: ModelsConfig) -> None:
        """Take a new catalog and budget in place. A model whose spec is unchanged keeps
        its slot, loaded or not; a changed or removed one is unloaded first, and if it is
        serving requests the push is refused (``Conflict``, nothing changed), so no request
        in flight loses its model."""
        stale = [s for a, s in self._slots.items() if cfg.catalog.get(a) != s.spec]
        for slot in stale:
            if slot.state == "loaded" and not slot.active:
                slot.pinned = False
                await self._unload(slot, "config")
        busy = [s.spec.alias for s in stale
                if s.state != "unloaded" or s.active or s.transition is not None]
        if busy:
            raise Conflict(f"model {busy[0]!r} is serving requests; push the config again "
                           "when it is idle", code="model_busy")
        facts = await asyncio.to_thread(read_memory_facts, cfg.power.cgroup_root)
        # No await from here on: the swap is atomic for requests arriving meanwhile.
        self._ledger.total = budget_bytes(cfg.budget, facts)
        self._cfg, self._catalog = cfg, Catalog(cfg)
        self._slots = {a: s if (s := self._slots.get(a)) is not None and s.spec == spec
                       else Resident(spec) for a, spec in cfg.catalog.items()}
        self._bump()
        self._metrics.show_budget(self._ledger)

    async def run(self) -> None:
        """Keep power-profile changes flowing into the idle timers; unload all at shutdown."""
        unsubscribe = self._power.subscribe(self._on_profile) if self._power else None
        try:
            await asyncio.Future()
        finally:
            if unsubscribe is not None:
                unsubscribe()
            await self._unload_all()

    # -- loading and making room ---------------------------------------------------------

    async def ensure_loaded(self, slot: Resident, deadline: float) -> None:
        """Load ``slot`` (making room) unless it is loaded; ``deadline`` (loop time) bounds
        waiting for room and for the load in progress."""
        while slot.state != "loaded":
            if slot.transition is not None:
                # Someone else is loading or unloading it; a failed load is retried (and
                # fails the same way, with its own clear error) by each waiter.
                await asyncio.shield(slot.transition)
                continue
            await self._load(slot, deadline)

    async def _load(self, slot: Resident, deadline: float) -> None:
        await self._eviction.enter(slot, deadline)
        try:
            await self._load_serial(slot, deadline)
        finally:
            self._eviction.leave()

    async def _load_serial(self, slot: Resident, deadline: float) -> None:
        if slot.state != "unloaded":  # another request loaded it while this one queued
            return
        slot.state = "loading"
        slot.transition = asyncio.get_running_loop().create_future()
        try:
            await self._loader.load(slot, self._catalog, deadline)
        except BaseException:
            self._ledger.release(slot.spec.alias)
            slot.state = "unloaded"
            raise
        finally:
            slot.transition.set_result(None)
            slot.transition = None
            self._bump()
            self._metrics.show_budget(self._ledger)

    # -- unloading -------------------------------------------------------------------------

    async def _unload(self, slot: Resident, reason: str) -> None:
        if slot.state != "loaded" or slot.active or slot.worker is None:
            return
        alias = slot.spec.alias
        bytes_before = self._ledger.cost_of(alias)
        slot.state = "unloading"
        slot.transition = asyncio.get_running_loop().create_future()
        self._idle.cancel(slot)
        try:
            await slot.worker.stop()
        finally:
            self._ledger.release(alias)
            slot.worker = None
            slot.state = "unloaded"
            slot.transition.set_result(None)
            slot.transition = None
            self._eviction.freed()
            self._bump()
            self._metrics.show_budget(self._ledger)
        self._metrics.evictions.labels(alias, reason).inc()
        self._metrics.loaded.labels(alias).set(0)
        log.info("unloaded %s (%s)", alias, reason)
        await audit_event(self._audit, "model.unload",
                          {"model": alias, "reason": reason, "bytes": bytes_before})

    async def _unload_all(self) -> None:
        for slot in self._slots.values():
            slot.pinned = False
            if slot.state == "loaded" and slot.worker is not None:
                await slot.worker.stop()
                slot.state = "unloaded"

    def _idle_expired(self, slot: Resident) -> None:
        if slot.state == "loaded" and not slot.active and not slot.pinned:
            self._spawn(self._unload(slot, "idle"), f"idle-unload-{slot.spec.alias}")

    def _on_profile(self, profile: str, settings: ProfileConfig) -> None:
        """A new profile's idle timeout applies to models idle right now, too."""
        timeout = settings.idle_unload or self._cfg.budget.idle_unload
        self._idle.retime(timeout)
        self._bump()  # /admin/ps shows the profile: wake its long-pollers
        log.info("power profile %s: idle unload after %.0fs", profile, timeout)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    # -- catalog entries, settings, bookkeeping --------------------------------------------

    async def _catalog_item(self, slot: Resident) -> dict[str, Any]:
        spec = slot.spec
        size = await asyncio.to_thread(self._catalog.size_bytes, spec)
        estimated = slot.estimated or None
        if estimated is None and size is not None:
            estimated = await asyncio.to_thread(self._loader.whole_estimate, spec, self._catalog)
        return {"id": spec.alias, "object": "model", "created": 0, "owned_by": "edged",
                "state": "loaded" if slot.state == "loaded" else "unloaded",
                "size_bytes": size, "estimated_bytes": estimated, "format": spec.format,
                "context": spec.context, "pinned": slot.pinned}

    def _bump(self) -> None:
        self._generation += 1
        self._moved.set()
        self._moved = asyncio.Event()

    def _idle_timeout(self) -> float:
        return self.settings().idle_unload or self._cfg.budget.idle_unload

