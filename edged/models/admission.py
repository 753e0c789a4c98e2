"""Who gets a model, and when: a request is routed to an alias, admitted or refused (429
with Retry-After) by the bounded per-model queue, given its deadline, and handed to the
model's worker once ``Residency`` has the model loaded.

The queue bound counts requests beyond the ones the model decodes together: a model with
``parallel`` sequences runs that many, the rest wait, and at ``budget.queue_size`` waiting
the next is refused. Retry-After is the model's recent run time times the requests ahead,
spread over its sequences. Priorities and start deadlines are kept by the worker's queue.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from edged.errors import QueueFull
from edged.models.backend import LoadedModel, TokenSink
from edged.models.config import BudgetConfig
from edged.models.contract import GenerateParams, Generation
from edged.models.metrics import ModelMetrics
from edged.models.residency import Residency
from edged.models.resident import Resident
from edged.models.streams import Handoff, TokenStream

T = TypeVar("T")
# Builds what runs on the worker thread, given the request's cancel flag.
MakeJob = Callable[[threading.Event], Callable[[LoadedModel], T]]
# The same for a stream: also given the sink its pieces go to.
MakeStreamJob = Callable[[TokenSink, threading.Event], Callable[[LoadedModel], Generation]]


class Admission:
    def __init__(self, budget: BudgetConfig, *, residency: Residency,
                 metrics: ModelMetrics) -> None:
        self._budget = budget
        self._residency = residency
        self._metrics = metrics

    def configure(self, budget: BudgetConfig) -> None:
        """A pushed ``[budget]``: the queue bound and the timeout of the next request."""
        self._budget = budget

    def request_timeout(self) -> float:
        """``budget.request_timeout``: how long a request may wait, as configured now."""
        return self._budget.request_timeout

    def route(self, alias: str) -> str:
        """Under a profile that prefers smaller variants, serve the first variant."""
        spec = self._residency.spec(alias)
        if spec.variants and self._residency.settings().prefer_smaller:
            return spec.variants[0]
        return alias

    @asynccontextmanager
    async def use(self, alias: str, params: GenerateParams
                  ) -> AsyncIterator[tuple[Resident, float]]:
        """Admit a request (or refuse it: queue full), load its model, keep it busy; yields
        the model and the deadline (loop time) by which its job must start."""
        residency = self._residency
        slot = residency.resident(self.route(alias))
        loop = asyncio.get_running_loop()
        self._admit(slot)
        deadline = (params.deadline if params.deadline is not None
                    else loop.time() + self._budget.request_timeout)
        residency.hold(slot)
        self._show_depth(slot)
        try:
            if slot.state != "loaded":
                started = loop.time()
                await residency.ensure_loaded(slot, deadline)
                # The deadline bounds waiting for the worker, not the load: checking the
                # file's sha256, evicting and loading can outlast it on a busy box.
                deadline += loop.time() - started
            yield slot, deadline
        finally:
            residency.release(slot)
            self._show_depth(slot)

    async def call(self, alias: str, params: GenerateParams, make: MakeJob[T]) -> T:
        """Run ``make(cancel)`` on the model's worker, by priority and deadline."""
        async with self.use(alias, params) as (slot, deadline):
            assert slot.worker is not None
            cancel = threading.Event()
            job = slot.worker.submit(_timed(slot, make(cancel)), params.priority,
                                     deadline, cancel)
            try:
                return await job.future
            finally:
                cancel.set()  # a request whose caller went away stops at the next token

    def stream(self, alias: str, params: GenerateParams, make: MakeStreamJob) -> TokenStream:
        """Pieces as the job hands them to its sink; closing the stream stops the job."""
        return TokenStream(lambda out: self._pieces(alias, params, make, out))

    async def _pieces(self, alias: str, params: GenerateParams, make: MakeStreamJob,
                      out: TokenStream) -> AsyncGenerator[str, None]:
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        sink = Handoff(asyncio.get_running_loop(), pieces.put_nowait)
        async with self.use(alias, params) as (slot, deadline):
            assert slot.worker is not None
            cancel = threading.Event()
            job = slot.worker.submit(_timed(slot, make(sink, cancel)), params.priority,
                                     deadline, cancel)
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

    def _admit(self, slot: Resident) -> None:
        waiting = max(0, slot.active - slot.parallel)  # `parallel` run; the rest wait
        if waiting < self._budget.queue_size:
            return
        alias = slot.spec.alias
        self._metrics.refusals.labels(alias, "queue_full").inc()
        raise QueueFull(f"model {alias!r} has {waiting} requests waiting "
                        f"(budget.queue_size = {self._budget.queue_size}); retry later",
                        retry_after=max(1.0, slot.avg_seconds * slot.active / slot.parallel))

    def _show_depth(self, slot: Resident) -> None:
        self._metrics.queue_depth.labels(slot.spec.alias).set(slot.active)


def _timed(slot: Resident, fn: Callable[[LoadedModel], T]) -> Callable[[LoadedModel], T]:
    """``fn``, keeping the model's moving average run time (for Retry-After)."""
    def run(model: LoadedModel) -> T:
        started = time.perf_counter()
        try:
            return fn(model)
        finally:
            slot.avg_seconds = 0.8 * slot.avg_seconds + 0.2 * (time.perf_counter() - started)
    return run
