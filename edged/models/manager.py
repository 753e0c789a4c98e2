"""The model manager: loads models on demand under the memory budget, runs each on its
own worker thread, queues requests with priorities and deadlines, unloads idle ones.

Making room follows DESIGN: evict idle (nothing in flight), unpinned models, least
recently used first; if that is not enough, wait (up to the request's deadline) for a
model to go idle, then refuse with 503 saying what was needed and what was free. Loads run
one at a time, so each load's real cost (RSS delta) can be measured and used instead of
the estimate next time. Idle unloads run on timers, never on a polling loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import psutil
from prometheus_client import CollectorRegistry

from edged.audit.sink import AuditSink
from edged.config import Config
from edged.errors import BadRequest, Conflict, QueueFull, Unavailable
from edged.models.backend import Backend, LoadedModel, TokenSink
from edged.models.budget import Ledger, Shared, mib
from edged.models.catalog import Catalog
from edged.models.config import ModelsConfig, ModelSpec, ProfileConfig, physical_cores
from edged.models.contract import GenerateParams, Generation
from edged.models.memory import budget_bytes, read_memory_facts, trim_heap
from edged.models.metrics import ModelMetrics
from edged.models.power import PowerMonitor
from edged.models.streams import Handoff, TokenStream
from edged.models.worker import Worker

log = logging.getLogger(__name__)

T = TypeVar("T")
Prompt = str | Sequence[dict[str, Any]]
DEFAULT_PARALLEL = 8  # llama-server's -np on a box like this; more adds little on 2 cores
_NO_PROFILE = ProfileConfig(threads=None, idle_unload=None, max_loaded=None,
                            prefer_smaller=False)


@dataclass
class _Slot:
    spec: ModelSpec
    state: str = "unloaded"  # unloaded | loading | loaded | unloading
    worker: Worker | None = None
    transition: asyncio.Future[None] | None = None
    pinned: bool = False
    active: int = 0  # requests waiting for or running on this model
    last_used: float = 0.0
    loaded_at: float = 0.0
    load_seconds: float = 0.0
    estimated: int = 0
    measured: int | None = None
    threads: int = 0
    parallel: int = 1  # sequences it decodes together
    avg_seconds: float = 1.0  # moving average of a request's run time, for Retry-After
    idle_timer: asyncio.TimerHandle | None = None


class ModelManager:
    """Implements ``edged.models.contract.Inference``."""

    def __init__(self, cfg: ModelsConfig, *, catalog: Catalog, backends: Mapping[str, Backend],
                 registry: CollectorRegistry, budget_bytes: int,
                 audit: AuditSink | None = None, power: PowerMonitor | None = None) -> None:
        self._cfg = cfg
        self._catalog = catalog
        self._backends = backends
        self._audit = audit
        self._power = power
        self._metrics = ModelMetrics(registry)
        self._slots = {alias: _Slot(spec) for alias, spec in cfg.catalog.items()}
        self._ledger = Ledger(budget_bytes)
        self._learned: dict[str, int] = {}  # alias -> measured own bytes of its last load
        self._room = asyncio.Lock()  # one load (and its room-making) at a time
        self._changed = asyncio.Event()  # a model went idle, was unloaded or unpinned
        self._generation = 0  # counts changes of the loaded set, for /admin/ps?wait
        self._moved = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._show_budget()

    # -- Inference -------------------------------------------------------------------

    def aliases(self) -> Sequence[str]:
        return list(self._slots)

    def spec(self, alias: str) -> ModelSpec:
        """The config of ``alias`` (404 naming the known aliases)."""
        return self._catalog.spec(alias)

    def request_timeout(self) -> float:
        """``budget.request_timeout``: how long a request may wait, as configured now."""
        return self._cfg.budget.request_timeout

    async def chat(self, alias: str, messages: Sequence[dict[str, Any]],
                   params: GenerateParams) -> Generation:
        return await self.generate(alias, list(messages), params)

    def stream_chat(self, alias: str, messages: Sequence[dict[str, Any]],
                    params: GenerateParams) -> TokenStream:
        return self.stream(alias, list(messages), params)

    async def complete(self, alias: str, prompt: str, params: GenerateParams) -> Generation:
        return await self.generate(alias, prompt, params)

    async def embed(self, alias: str, texts: Sequence[str]) -> list[list[float]]:
        items = list(texts)
        return await self._call(alias, GenerateParams(),
                                lambda cancel: lambda m: _embed_chunks(m, items, cancel))

    async def embed_counted(self, alias: str, texts: Sequence[str]
                            ) -> tuple[list[list[float]], int]:
        """Vectors and the number of input tokens they took (0 if the model cannot say)."""
        items = list(texts)

        def job(cancel: threading.Event) -> Callable[[LoadedModel], tuple[list[list[float]], int]]:
            def run(m: LoadedModel) -> tuple[list[list[float]], int]:
                count = getattr(m, "count_tokens", None)
                vectors = _embed_chunks(m, items, cancel)
                return vectors, int(count(items)) if count is not None else 0
            return run
        return await self._call(alias, GenerateParams(), job)

    async def classify(self, alias: str, texts: Sequence[str]) -> list[list[float]]:
        return (await self.classify_labeled(alias, texts))[0]

    async def classify_labeled(self, alias: str, texts: Sequence[str]
                               ) -> tuple[list[list[float]], tuple[str, ...]]:
        """Class scores per text, and the class names when the model has them."""
        items = list(texts)

        def run(m: LoadedModel) -> tuple[list[list[float]], tuple[str, ...]]:
            return m.classify(items), tuple(getattr(m, "labels", ()) or ())
        return await self._call(alias, GenerateParams(), lambda _cancel: run)

    async def generate(self, alias: str, prompt: Prompt, params: GenerateParams) -> Generation:
        """A string prompt is raw completion; a list of messages gets the chat format."""
        return await self._call(
            alias, params, lambda cancel: self._generate_job(alias, prompt, params, None, cancel))

    def stream(self, alias: str, prompt: Prompt, params: GenerateParams) -> TokenStream:
        return TokenStream(lambda out: self._pieces(alias, prompt, params, out))

    # -- admin -----------------------------------------------------------------------

    async def load(self, alias: str, *, pin: bool = False) -> dict[str, Any]:
        async with self._use(alias, GenerateParams()) as (slot, _deadline):
            if pin:
                slot.pinned = True
            self._bump()
        await self._audit_event("model.pin" if pin else "model.load.request",
                                {"model": alias, "pinned": slot.pinned})
        return self._describe(slot)

    async def unload(self, alias: str) -> dict[str, Any]:
        slot = self._slot(alias)
        slot.pinned = False
        if slot.state == "unloaded":
            return self._describe(slot)
        if slot.active:
            raise Conflict(f"model {alias!r} has {slot.active} requests in flight; it will "
                           "unload when idle", code="model_busy")
        if slot.transition is not None:
            await asyncio.shield(slot.transition)
        await self._unload(slot, "admin")
        return self._describe(slot)

    async def reload(self, config: Config) -> None:
        """A pushed config (edged/remote) takes the [models] catalog and [budget] in place.
        A model whose spec is unchanged keeps its slot, loaded or not; a changed or removed
        one is unloaded first, and if it is serving requests the push is refused (and
        rolled back), so no request in flight loses its model."""
        cfg = config.models
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
                       else _Slot(spec) for a, spec in cfg.catalog.items()}
        self._bump()
        self._show_budget()

    def ps(self) -> dict[str, Any]:
        loaded = [self._describe(s) for s in self._slots.values() if s.state != "unloaded"]
        return {"models": loaded, "generation": self._generation, **self._budget_view()}

    async def wait_change(self, generation: int) -> None:
        """Return once the loaded set moved past ``generation``."""
        while self._generation == generation:
            await self._moved.wait()

    async def catalog_view(self) -> list[dict[str, Any]]:
        return [await self._catalog_item(s) for s in self._slots.values()]

    async def catalog_entry(self, alias: str) -> dict[str, Any]:
        return await self._catalog_item(self._slot(alias))

    def health(self) -> dict[str, Any]:
        loaded = sorted(a for a, s in self._slots.items() if s.state == "loaded")
        return {"loaded": loaded, "profile": self._profile_name(), **self._budget_view()}

    def status_line(self) -> str:
        loaded = [a for a, s in self._slots.items() if s.state == "loaded"]
        return f"models: {', '.join(loaded) or 'none loaded'}"

    async def run(self) -> None:
        """Keep power-profile changes flowing into the idle timers; unload all at shutdown."""
        unsubscribe = self._power.subscribe(self._on_profile) if self._power else None
        try:
            await asyncio.Future()
        finally:
            if unsubscribe is not None:
                unsubscribe()
            await self._unload_all()

    # -- requests --------------------------------------------------------------------

    async def _call(self, alias: str, params: GenerateParams,
                    make: Callable[[threading.Event], Callable[[LoadedModel], T]]) -> T:
        async with self._use(alias, params) as (slot, deadline):
            assert slot.worker is not None
            cancel = threading.Event()
            job = slot.worker.submit(self._timed(slot, make(cancel)), params.priority,
                                     deadline, cancel)
            try:
                return await job.future
            finally:
                cancel.set()  # a request whose caller went away stops at the next token

    async def _pieces(self, alias: str, prompt: Prompt, params: GenerateParams,
                      out: TokenStream) -> AsyncGenerator[str, None]:
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        sink = Handoff(asyncio.get_running_loop(), pieces.put_nowait)
        async with self._use(alias, params) as (slot, deadline):
            assert slot.worker is not None
            cancel = threading.Event()
            job = slot.worker.submit(
                self._timed(slot, self._generate_job(alias, prompt, params, sink, cancel)),
                params.priority, deadline, cancel)
            # Scheduled after every piece the worker queued, so it marks the end.
            job.future.add_done_callback(lambda _f: pieces.put_nowait(None))
            try:
                while (piece := await pieces.get()) is not None:
                    yield piece
                out.result = job.future.result()
            finally:
                cancel.set()
                if not job.future.done():
                    await asyncio.wait([job.future])

    def _generate_job(self, alias: str, prompt: Prompt, params: GenerateParams,
                      sink: TokenSink | None, cancel: threading.Event
                      ) -> Callable[[LoadedModel], Generation]:
        metrics = self._metrics

        def job(model: LoadedModel) -> Generation:
            started = time.perf_counter()
            first: list[float] = []

            def on_token(piece: str) -> bool:
                if not first:
                    first.append(time.perf_counter())
                if cancel.is_set():
                    return False
                return sink(piece) if sink is not None else True

            gen = model.generate(prompt, params, on_token)
            if first:
                metrics.ttft.labels(alias).observe(first[0] - started)
                decode = time.perf_counter() - first[0]
                if gen.completion_tokens > 1 and decode > 0:
                    metrics.tokens_per_second.labels(alias).observe(
                        (gen.completion_tokens - 1) / decode)
            metrics.tokens.labels(alias).inc(gen.completion_tokens)
            return gen
        return job

    def _timed(self, slot: _Slot, fn: Callable[[LoadedModel], T]) -> Callable[[LoadedModel], T]:
        def run(model: LoadedModel) -> T:
            started = time.perf_counter()
            try:
                return fn(model)
            finally:
                slot.avg_seconds = 0.8 * slot.avg_seconds + 0.2 * (time.perf_counter() - started)
        return run

    @asynccontextmanager
    async def _use(self, alias: str, params: GenerateParams
                   ) -> AsyncIterator[tuple[_Slot, float]]:
        """Admit a request (or refuse it: queue full), load its model, keep it busy."""
        slot = self._slot(self._route(alias))
        loop = asyncio.get_running_loop()
        self._admit(slot)
        deadline = (params.deadline if params.deadline is not None
                    else loop.time() + self._cfg.budget.request_timeout)
        slot.active += 1
        self._cancel_idle(slot)
        self._metrics.queue_depth.labels(slot.spec.alias).set(slot.active)
        try:
            if slot.state != "loaded":
                started = loop.time()
                await self._ensure_loaded(slot, deadline)
                # The deadline bounds waiting for the worker, not the load: checking the
                # file's sha256, evicting and loading can outlast it on a busy box.
                deadline += loop.time() - started
            yield slot, deadline
        finally:
            slot.active -= 1
            slot.last_used = loop.time()
            self._metrics.queue_depth.labels(slot.spec.alias).set(slot.active)
            if slot.active == 0:
                self._went_idle(slot)

    def _admit(self, slot: _Slot) -> None:
        waiting = max(0, slot.active - slot.parallel)  # `parallel` run; the rest wait
        if waiting < self._cfg.budget.queue_size:
            return
        alias = slot.spec.alias
        self._metrics.refusals.labels(alias, "queue_full").inc()
        raise QueueFull(f"model {alias!r} has {waiting} requests waiting "
                        f"(budget.queue_size = {self._cfg.budget.queue_size}); retry later",
                        retry_after=max(1.0, slot.avg_seconds * slot.active / slot.parallel))

    def _slot(self, alias: str) -> _Slot:
        spec = self._catalog.spec(alias)  # 404 naming the known aliases
        return self._slots[spec.alias]

    def _route(self, alias: str) -> str:
        """Under a profile that prefers smaller variants, serve the first variant."""
        spec = self._catalog.spec(alias)
        if spec.variants and self._settings().prefer_smaller:
            return spec.variants[0]
        return alias

    # -- loading and making room ---------------------------------------------------------

    async def _ensure_loaded(self, slot: _Slot, deadline: float) -> None:
        while slot.state != "loaded":
            if slot.transition is not None:
                # Someone else is loading or unloading it; a failed load is retried (and
                # fails the same way, with its own clear error) by each waiter.
                await asyncio.shield(slot.transition)
                continue
            await self._load(slot, deadline)

    async def _load(self, slot: _Slot, deadline: float) -> None:
        await self._enter_room(slot, deadline)
        try:
            await self._load_serial(slot, deadline)
        finally:
            self._room.release()

    async def _enter_room(self, slot: _Slot, deadline: float) -> None:
        """Queue behind the load in progress, but only until the request's deadline."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._room.acquire()
        except TimeoutError:
            busy = [s.spec.alias for s in self._slots.values() if s.state == "loading"]
            raise Unavailable(f"model {slot.spec.alias!r} could not start loading before its "
                              f"deadline: waiting behind the load of {', '.join(busy) or '?'}",
                              code="over_budget") from None

    async def _load_serial(self, slot: _Slot, deadline: float) -> None:
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

    async def _load_locked(self, slot: _Slot, deadline: float) -> None:
        spec = slot.spec
        path = await self._catalog.resolve(spec)
        backend = self._backend(spec)
        threads = self._threads(spec)
        spec = await asyncio.to_thread(_sized, backend, spec, path, threads, self._ledger.total)
        own_est, shared = await asyncio.to_thread(_estimate, backend, spec, path, threads)
        own = self._learned.get(spec.alias, own_est)
        slot.estimated = own_est + sum(shared.values())
        await self._make_room(slot, own, shared, deadline)
        self._ledger.charge(spec.alias, own, shared)
        self._show_budget()
        worker = Worker(spec.alias, asyncio.get_running_loop(), self._queue_wait_observer(spec),
                        parallel=spec.parallel or 1)
        started = time.perf_counter()
        _model, delta = await worker.start(lambda: _measured_load(backend, spec, path, threads),
                                           _close)
        slot.parallel = spec.parallel or 1
        self._loaded(slot, worker, threads, time.perf_counter() - started)
        # The load mapped its file afresh (in its RSS delta); runtime heaps grow later.
        mapped = sum(v for k, v in shared.items() if k.startswith("file:"))
        self._learn(slot, delta - mapped * _mappings(backend, spec))
        await self._audit_event("model.load", {
            "model": spec.alias, "bytes": self._ledger.cost_of(spec.alias),
            "estimated_bytes": slot.estimated, "seconds": round(slot.load_seconds, 3),
            "threads": threads, "parallel": slot.parallel, "profile": self._profile_name()})

    def _loaded(self, slot: _Slot, worker: Worker, threads: int, seconds: float) -> None:
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

    def _learn(self, slot: _Slot, measured_own: int) -> None:
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

    async def _make_room(self, slot: _Slot, own: int, shared: Shared,
                         deadline: float) -> None:
        whole = own + sum(shared.values())
        if whole > self._ledger.total:
            await self._refuse(slot, whole, "model_too_large",
                               f"model {slot.spec.alias!r} needs {mib(whole)}, more "
                               f"than the whole budget of {mib(self._ledger.total)} "
                               "(budget.memory)")
        loop = asyncio.get_running_loop()
        while True:
            need = self._ledger.need(own, shared)
            if need <= self._ledger.free() and self._count_allows(slot):
                return
            victim = self._lru_victim(slot)
            if victim is not None:
                await self._unload(victim, "evicted")
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                await self._refuse(slot, need, "over_budget", self._no_room_message(slot, need))
            self._changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def _count_allows(self, slot: _Slot) -> bool:
        cap = self._settings().max_loaded
        others = sum(1 for s in self._slots.values()
                     if s is not slot and s.state in ("loaded", "loading"))
        return cap is None or others < cap

    def _lru_victim(self, loading: _Slot) -> _Slot | None:
        idle = [s for s in self._slots.values()
                if s is not loading and s.state == "loaded" and not s.active and not s.pinned]
        return min(idle, key=lambda s: s.last_used, default=None)

    def _no_room_message(self, slot: _Slot, need: int) -> str:
        held = [f"{s.spec.alias} ({mib(self._ledger.cost_of(s.spec.alias))}, "
                f"{'pinned' if s.pinned else 'busy'})"
                for s in self._slots.values() if s is not slot and s.state != "unloaded"]
        return (f"model {slot.spec.alias!r} needs {mib(need)} but only "
                f"{mib(max(0, self._ledger.free()))} of the {mib(self._ledger.total)} budget is "
                f"free; held by: {', '.join(held) or 'nothing'}")

    async def _refuse(self, slot: _Slot, need: int, code: str, message: str) -> None:
        free = max(0, self._ledger.free())
        self._metrics.refusals.labels(slot.spec.alias, code).inc()
        log.warning("%s", message)
        await self._audit_event("model.refused", {"model": slot.spec.alias, "reason": code,
                                                  "needed_bytes": need, "free_bytes": free})
        raise Unavailable(message, code=code, needed_bytes=need, free_bytes=free,
                          budget_bytes=self._ledger.total)

    # -- unloading -------------------------------------------------------------------------

    async def _unload(self, slot: _Slot, reason: str) -> None:
        if slot.state != "loaded" or slot.active or slot.worker is None:
            return
        alias = slot.spec.alias
        bytes_before = self._ledger.cost_of(alias)
        slot.state = "unloading"
        slot.transition = asyncio.get_running_loop().create_future()
        self._cancel_idle(slot)
        try:
            await slot.worker.stop()
        finally:
            self._ledger.release(alias)
            slot.worker = None
            slot.state = "unloaded"
            slot.transition.set_result(None)
            slot.transition = None
            self._changed.set()
            self._bump()
            self._show_budget()
        self._metrics.evictions.labels(alias, reason).inc()
        self._metrics.loaded.labels(alias).set(0)
        log.info("unloaded %s (%s)", alias, reason)
        await self._audit_event("model.unload", {"model": alias, "reason": reason,
                                                 "bytes": bytes_before})

    async def _unload_all(self) -> None:
        for slot in self._slots.values():
            slot.pinned = False
            if slot.state == "loaded" and slot.worker is not None:
                await slot.worker.stop()
                slot.state = "unloaded"

    def _went_idle(self, slot: _Slot) -> None:
        self._changed.set()
        if slot.state == "loaded" and not slot.pinned:
            self._arm_idle(slot, self._idle_timeout())

    def _arm_idle(self, slot: _Slot, delay: float) -> None:
        self._cancel_idle(slot)
        slot.idle_timer = asyncio.get_running_loop().call_later(
            max(0.0, delay), self._idle_expired, slot)

    def _cancel_idle(self, slot: _Slot) -> None:
        if slot.idle_timer is not None:
            slot.idle_timer.cancel()
            slot.idle_timer = None

    def _idle_expired(self, slot: _Slot) -> None:
        slot.idle_timer = None
        if slot.state == "loaded" and not slot.active and not slot.pinned:
            self._spawn(self._unload(slot, "idle"), f"idle-unload-{slot.spec.alias}")

    def _on_profile(self, profile: str, settings: ProfileConfig) -> None:
        """A new profile's idle timeout applies to models idle right now, too."""
        now = asyncio.get_running_loop().time()
        timeout = settings.idle_unload or self._cfg.budget.idle_unload
        for slot in self._slots.values():
            if slot.idle_timer is not None:
                self._arm_idle(slot, slot.last_used + timeout - now)
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

    # -- views, settings, bookkeeping --------------------------------------------------------

    def _describe(self, slot: _Slot) -> dict[str, Any]:
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

    async def _catalog_item(self, slot: _Slot) -> dict[str, Any]:
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
            spec = _sized(backend, spec, path, threads, self._ledger.total)
            own, shared = _estimate(backend, spec, path, threads)
        except Exception as e:  # a bad file shows as "no estimate" here, and fails its load
            log.debug("no estimate for %s: %s", spec.alias, e)
            return None
        return own + sum(shared.values())

    def _budget_view(self) -> dict[str, Any]:
        return {"budget_bytes": self._ledger.total, "used_bytes": self._ledger.used(),
                "free_bytes": self._ledger.free(), "profile": self._profile_name()}

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

    def _settings(self) -> ProfileConfig:
        return self._power.settings if self._power is not None else _NO_PROFILE

    def _profile_name(self) -> str:
        return self._power.profile if self._power is not None else "ac"

    def _threads(self, spec: ModelSpec) -> int:
        # Default as llama.cpp's and Ollama's: one thread per physical core. Half the cores
        # (llama-cpp-python's default) cost 0.6x of the box's decode speed; the event loop
        # and the socket take little, and llama.cpp's OpenMP threads spin only for ~10 ms
        # after a decode step, then sleep (docs/performance.md, "Threads").
        profile = self._settings().threads
        own = spec.threads or physical_cores()
        return min(own, profile) if profile else own

    def _idle_timeout(self) -> float:
        return self._settings().idle_unload or self._cfg.budget.idle_unload

    def _queue_wait_observer(self, spec: ModelSpec) -> Callable[[Any], None]:
        histogram = self._metrics.queue_wait.labels(spec.alias)
        return lambda job: histogram.observe(job.started - job.enqueued)

    async def _audit_event(self, kind: str, data: dict[str, Any]) -> None:
        if self._audit is None:
            return
        try:
            await self._audit.append(kind, "daemon", data)
        except Exception:  # the model event stands; a failing audit log raises its own alarm
            log.exception("could not audit %s", kind)


def _estimate(backend: Backend, spec: ModelSpec, path: Path, threads: int
              ) -> tuple[int, Shared]:
    """Blocking: (own bytes, shared costs) of a load. A backend without ``shared_costs``
    (ONNX: no mmapped weights) has none."""
    shared_of = getattr(backend, "shared_costs", None)
    shared: Shared = dict(shared_of(path)) if shared_of is not None else {}
    return backend.estimate(spec, path, threads), shared


def _sized(backend: Backend, spec: ModelSpec, path: Path, threads: int, budget: int
           ) -> ModelSpec:
    """Blocking: ``spec`` with its ``parallel`` decided. Only GGUF models batch; without a
    configured value, as many sequences (up to DEFAULT_PARALLEL) as keep the KV cache and
    logits of the extra ones within a quarter of the memory budget."""
    if spec.format != "gguf":
        return replace(spec, parallel=1)
    if spec.parallel is not None:
        return spec
    alone = backend.estimate(replace(spec, parallel=1), path, threads)
    for parallel in range(DEFAULT_PARALLEL, 1, -1):
        sized = replace(spec, parallel=parallel)
        if backend.estimate(sized, path, threads) - alone <= budget // 4:
            return sized
    return replace(spec, parallel=1)


def _mappings(backend: Backend, spec: ModelSpec) -> int:
    count = getattr(backend, "mappings", None)
    return int(count(spec)) if count is not None else 1


def _measured_load(backend: Backend, spec: ModelSpec, path: Path, threads: int
                   ) -> tuple[LoadedModel, int]:
    """Runs on the model's worker thread; loads are serial, so the RSS delta is this load.

    RSS, not PSS: every load maps its file afresh, so its RSS delta is always the weights
    plus its own bytes, and the own part is the delta minus the (known) weights. PSS would
    split the weights with every other process mapping the file (a second daemon, a
    benchmark) and hide them. RSS is also cheap to read (statm, not smaps). No trim first:
    every unload already ended with one. The backend's library is imported first: it is
    paid once per process, not by the first model that happens to load."""
    warm_up = getattr(backend, "warm_up", None)
    if warm_up is not None:
        warm_up()
    before = psutil.Process().memory_info().rss
    model = backend.load(spec, path, threads)
    return model, psutil.Process().memory_info().rss - before


def _close(model: LoadedModel) -> None:
    model.close()
    trim_heap()  # llama.cpp leaves 60-100 MiB in the C heap until trimmed


EMBED_CHUNK = 8  # texts per batch: a request whose caller left stops at the next one


def _embed_chunks(model: LoadedModel, items: list[str], cancel: threading.Event
                  ) -> list[list[float]]:
    vectors: list[list[float]] = []
    for start in range(0, len(items), EMBED_CHUNK):
        if cancel.is_set():
            raise asyncio.CancelledError()
        vectors += model.embed(items[start:start + EMBED_CHUNK])
    return vectors
