"""Loading one model: resolve its file, decide its ``parallel`` and threads, estimate its
cost, have ``Eviction`` make room, charge the ledger, start its worker, and learn its real
cost (the RSS delta) for its next load.

Loads run one at a time (``Eviction.enter``), so a load's RSS delta is its own. What a
model costs by its file is in ``load_cost.py``; this class puts it to the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from edged.audit.sink import AuditSink
from edged.errors import BadRequest
from edged.models.backend import Backend
from edged.models.budget import Ledger, mib
from edged.models.catalog import Catalog
from edged.models.config import ModelSpec, ProfileConfig, physical_cores
from edged.models.eviction import Eviction
from edged.models.load_cost import close_model, estimate, mappings, measured_load, sized
from edged.models.metrics import ModelMetrics
from edged.models.resident import Resident, audit_event
from edged.models.worker import Worker

log = logging.getLogger(__name__)


class Loader:
    def __init__(self, ledger: Ledger, *, backends: Mapping[str, Backend], eviction: Eviction,
                 metrics: ModelMetrics, settings: Callable[[], ProfileConfig],
                 profile_name: Callable[[], str], audit: AuditSink | None = None) -> None:
        self._ledger = ledger
        self._backends = backends
        self._eviction = eviction
        self._metrics = metrics
        self._settings = settings  # the power profile's, read at each load
        self._profile_name = profile_name
        self._audit = audit
        self._learned: dict[str, int] = {}  # alias -> measured own bytes of its last load

    async def load(self, slot: Resident, catalog: Catalog, deadline: float) -> None:
        """Load ``slot`` (in state "loading") and leave it "loaded" with its worker; on
        failure the caller releases its charge and marks it unloaded."""
        spec = slot.spec
        path = await catalog.resolve(spec)
        backend = self._backend(spec)
        threads = self.threads(spec)
        spec = await asyncio.to_thread(sized, backend, spec, path, threads, self._ledger.total)
        own_est, shared = await asyncio.to_thread(estimate, backend, spec, path, threads)
        own = self._learned.get(spec.alias, own_est)
        slot.estimated = own_est + sum(shared.values())
        await self._eviction.make_room(slot, own, shared, deadline)
        self._ledger.charge(spec.alias, own, shared)
        self._metrics.show_budget(self._ledger)
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
            "threads": threads, "parallel": slot.parallel, "profile": self._profile_name()})

    def whole_estimate(self, spec: ModelSpec, catalog: Catalog) -> int | None:
        """Blocking: what loading ``spec`` would cost by its file (None if it cannot say)."""
        try:
            backend, path = self._backend(spec), catalog.path_of(spec)
            source = catalog.unassembled_header(spec)
            prime = getattr(backend, "prime", None)
            if source is not None and prime is not None:
                prime(path, *source)
            threads = self.threads(spec)
            spec = sized(backend, spec, path, threads, self._ledger.total)
            own, shared = estimate(backend, spec, path, threads)
        except Exception as e:  # a bad file shows as "no estimate" here, and fails its load
            log.debug("no estimate for %s: %s", spec.alias, e)
            return None
        return own + sum(shared.values())

    def threads(self, spec: ModelSpec) -> int:
        # Default as llama.cpp's and Ollama's: one thread per physical core. Half the cores
        # (llama-cpp-python's default) cost 0.6x of the box's decode speed; the event loop
        # and the socket take little, and llama.cpp's OpenMP threads spin only for ~10 ms
        # after a decode step, then sleep (docs/performance.md, "Threads").
        profile = self._settings().threads
        own = spec.threads or physical_cores()
        return min(own, profile) if profile else own

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
        self._metrics.show_budget(self._ledger)

    def _backend(self, spec: ModelSpec) -> Backend:
        backend = self._backends.get(spec.format)
        if backend is None:
            raise BadRequest(f"models.{spec.alias}.format: no {spec.format} backend in this "
                             "build", code="no_backend")
        return backend

    def _queue_wait_observer(self, spec: ModelSpec) -> Callable[[Any], None]:
        histogram = self._metrics.queue_wait.labels(spec.alias)
        return lambda job: histogram.observe(job.started - job.enqueued)
