"""Which models are loaded: loads them on demand under the memory budget, unloads idle
ones, takes a new catalog and budget in place.

Loads run one at a time, so each load's real cost (RSS delta) can be measured and used
instead of the estimate next time. Making room for a load is ``Eviction``'s job; idle
unloads run on ``IdleTimers``. Who may use a loaded model, and when, is ``Admission``'s;
this class only counts who holds one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from edged.audit.sink import AuditSink
from edged.errors import BadRequest, Conflict
from edged.models.backend import Backend
from edged.models.budget import Ledger, mib
from edged.models.catalog import Catalog
from edged.models.config import ModelsConfig, ModelSpec, ProfileConfig, physical_cores
from edged.models.eviction import Eviction
from edged.models.idle import IdleTimers
from edged.models.load_cost import close_model, estimate, mappings, measured_load, sized
from edged.models.memory import budget_bytes, read_memory_facts
from edged.models.metrics import ModelMetrics
from edged.models.power import PowerMonitor
from edged.models.resident import Resident, audit_event
from edged.models.worker import Worker

log = logging.getLogger(__name__)

_NO_PROFILE = ProfileConfig(threads=None, idle_unload=None, max_loaded=None,
                            prefer_smaller=False)


class Residency:
    def __init__(self, cfg: ModelsConfig, *, catalog: Catalog, backends: Mapping[str, Backend],
                 metrics: ModelMetrics, budget_bytes: int, audit: AuditSink | None = None,
                 power: PowerMonitor | None = None) -> None:
        self._cfg = cfg
        self._catalog = catalog
        self._backends = backends
        self._metrics = metrics
        self._audit = audit
        self._power = power
        self._slots = {alias: Resident(spec) for alias, spec in cfg.catalog.items()}
        self._ledger = Ledger(budget_bytes)
        self._learned: dict[str, int] = {}  # alias -> measured own bytes of its last load
        self._generation = 0  # counts changes of the loaded set, for /admin/ps?wait
        self._moved = asyncio.Event()
        self._idle: IdleTimers[Resident] = IdleTimers(self._idle_expired)
        self._eviction = Eviction(self._ledger, residents=lambda: self._slots.values(),
                                  unload=self._unload, settings=self.settings,
                                  metrics=metrics, audit=audit)
        self._tasks: set[asyncio.Task[None]] = set()
        self._show_budget()

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
        self._show_budget()

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
            await self._load_locked(slot, deadline)
        except BaseException:
            self._ledger.release(slot.spec.alias)
            slot.state = "unloaded"
            raise
        finally:
            slot.transition.set_result(None)
            slot.transition = None
            self._bump()
            self._show_budget()

    async def _load_locked(self, slot: Resident, deadline: float) -> None:
        spec = slot.spec
        path = await self._catalog.resolve(spec)
        backend = self._backend(spec)
        threads = self._threads(spec)
        spec = await asyncio.to_thread(sized, backend, spec, path, threads, self._ledger.total)
        own_est, shared = await asyncio.to_thread(estimate, backend, spec, path, threads)
        own = self._learned.get(spec.alias, own_est)
        slot.estimated = own_est + sum(shared.values())
        await self._eviction.make_room(slot, own, shared, deadline)
        self._ledger.charge(spec.alias, own, shared)
        self._show_budget()
        worker = Worker(spec.alias, asyncio.get_running_loop(), self._queue_wait_observer(spec),
                        parallel=spec.parallel or 1)
        started = time.perf_counter()
        _model, delta = await worker.start(lambda: measured_load(backend, spec, path, threads),
                                           close_model)
        slot.parallel = spec.parallel or 1
        self._loaded(slot, worker, threads, time.perf_counter() - started)
        # The load mapped its file afresh (in its RSS delta); runtime heaps grow later.
        mapped = sum(v for k, v in shared.items() if k.startswith("file:"))
        self._learn(slot, delta - mapped * mappings(backend, spec))
        await audit_event(self._audit, "model.load", {
            "model": spec.alias, "bytes": self._ledger.cost_of(spec.alias),
            "estimated_bytes": slot.estimated, "seconds": round(slot.load_seconds, 3),
            "threads": threads, "parallel": slot.parallel, "profile": self.profile_name()})

    def _loaded(self, slot: Resident, worker: Worker, threads: int, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        slot.worker = worker
        slot.state = "loaded"
        slot.threads = threads
        slot.load_seconds = seconds
        slot.loaded_at = slot.last_used = loop.time()
        self._metrics.load_seconds.labels(slot.spec.alias).observe(seconds)
        self._metrics.loaded.labels(slot.spec.alias).set(1)
        log.info("loaded %s in %.2fs (%d threads, %d sequences)", slot.spec.alias, seconds,
                 threads, slot.parallel)

    def _learn(self, slot: Resident, measured_own: int) -> None:
        """Charge what the load really added; remember it for the next load's estimate."""
        alias = slot.spec.alias
        if measured_own <= 0:  # noise from a concurrent free: keep the estimate
            return
        slot.measured = measured_own
        self._learned[alias] = measured_own
        self._ledger.correct(alias, measured_own)
        if self._ledger.free() < 0:
            log.warning("model %s cost %s more than estimated; the budget is over by %s until "
                        "the next eviction", alias, mib(measured_own), mib(-self._ledger.free()))
        self._show_budget()

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
            self._show_budget()
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
            estimated = await asyncio.to_thread(self._try_estimate, spec)
        return {"id": spec.alias, "object": "model", "created": 0, "owned_by": "edged",
                "state": "loaded" if slot.state == "loaded" else "unloaded",
                "size_bytes": size, "estimated_bytes": estimated, "format": spec.format,
                "context": spec.context, "pinned": slot.pinned}

    def _try_estimate(self, spec: ModelSpec) -> int | None:
        try:
            backend, path = self._backend(spec), self._catalog.path_of(spec)
            source = self._catalog.unassembled_header(spec)
            prime = getattr(backend, "prime", None)
            if source is not None and prime is not None:
                prime(path, *source)
            threads = self._threads(spec)
            spec = sized(backend, spec, path, threads, self._ledger.total)
            own, shared = estimate(backend, spec, path, threads)
        except Exception as e:  # a bad file shows as "no estimate" here, and fails its load
            log.debug("no estimate for %s: %s", spec.alias, e)
            return None
        return own + sum(shared.values())

    def _show_budget(self) -> None:
        self._metrics.budget.set(self._ledger.total)
        self._metrics.budget_used.set(self._ledger.used())
        self._metrics.budget_free.set(self._ledger.free())

    def _bump(self) -> None:
        self._generation += 1
        self._moved.set()
        self._moved = asyncio.Event()

    def _backend(self, spec: ModelSpec) -> Backend:
        backend = self._backends.get(spec.format)
        if backend is None:
            raise BadRequest(f"models.{spec.alias}.format: no {spec.format} backend in this "
                             "build", code="no_backend")
        return backend

    def _threads(self, spec: ModelSpec) -> int:
        # Default as llama.cpp's and Ollama's: one thread per physical core. Half the cores
        # (llama-cpp-python's default) cost 0.6x of the box's decode speed; the event loop
        # and the socket take little, and llama.cpp's OpenMP threads spin only for ~10 ms
        # after a decode step, then sleep (docs/performance.md, "Threads").
        profile = self.settings().threads
        own = spec.threads or physical_cores()
        return min(own, profile) if profile else own

    def _queue_wait_observer(self, spec: ModelSpec) -> Callable[[Any], None]:
        histogram = self._metrics.queue_wait.labels(spec.alias)
        return lambda job: histogram.observe(job.started - job.enqueued)

    def _idle_timeout(self) -> float:
        return self.settings().idle_unload or self._cfg.budget.idle_unload

