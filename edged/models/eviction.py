"""Making room for a load under the memory budget (DESIGN, "Models: budget, power, queue").

Evict idle (nothing in flight), unpinned models, least recently used first, while the load
does not fit in the ledger or the power profile's ``max_loaded`` would be passed; if that
is not enough, wait (up to the request's deadline) for a model to go idle or unload, then
refuse with 503 saying what was needed and what was free. A model larger than the whole
budget is refused at once. Loads queue behind each other here (one at a time), so each
load's RSS delta is its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from edged.audit.sink import AuditSink
from edged.errors import Unavailable
from edged.models.budget import Ledger, Shared, mib
from edged.models.config import ProfileConfig
from edged.models.metrics import ModelMetrics
from edged.models.resident import Resident, audit_event

log = logging.getLogger(__name__)


class Eviction:
    def __init__(self, ledger: Ledger, *, residents: Callable[[], Iterable[Resident]],
                 unload: Callable[[Resident, str], Awaitable[None]],
                 settings: Callable[[], ProfileConfig], metrics: ModelMetrics,
                 audit: AuditSink | None = None) -> None:
        self._ledger = ledger
        self._residents = residents  # the catalog's models now (a reload replaces them)
        self._unload = unload
        self._settings = settings
        self._metrics = metrics
        self._audit = audit
        self._turn = asyncio.Lock()  # one load (and its room-making) at a time
        self._freed = asyncio.Event()  # a model went idle, was unloaded or unpinned

    def freed(self) -> None:
        """A model went idle or was unloaded: a load waiting for room looks again."""
        self._freed.set()

    async def enter(self, slot: Resident, deadline: float) -> None:
        """Queue behind the load in progress, but only until the request's deadline."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._turn.acquire()
        except TimeoutError:
            busy = [s.spec.alias for s in self._residents() if s.state == "loading"]
            raise Unavailable(f"model {slot.spec.alias!r} could not start loading before its "
                              f"deadline: waiting behind the load of {', '.join(busy) or '?'}",
                              code="over_budget") from None

    def leave(self) -> None:
        self._turn.release()

    async def make_room(self, slot: Resident, own: int, shared: Shared,
                        deadline: float) -> None:
        """Return once ``own`` bytes and the ``shared`` costs no loaded model pays yet fit
        (and the profile's cap on loaded models allows one more); else 503."""
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
            self._freed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._freed.wait()
            except TimeoutError:
                pass

    def _count_allows(self, slot: Resident) -> bool:
        cap = self._settings().max_loaded
        others = sum(1 for s in self._residents()
                     if s is not slot and s.state in ("loaded", "loading"))
        return cap is None or others < cap

    def _lru_victim(self, loading: Resident) -> Resident | None:
        idle = [s for s in self._residents()
                if s is not loading and s.state == "loaded" and not s.active and not s.pinned]
        return min(idle, key=lambda s: s.last_used, default=None)

    def _no_room_message(self, slot: Resident, need: int) -> str:
        held = [f"{s.spec.alias} ({mib(self._ledger.cost_of(s.spec.alias))}, "
                f"{'pinned' if s.pinned else 'busy'})"
                for s in self._residents() if s is not slot and s.state != "unloaded"]
        return (f"model {slot.spec.alias!r} needs {mib(need)} but only "
                f"{mib(max(0, self._ledger.free()))} of the {mib(self._ledger.total)} budget is "
                f"free; held by: {', '.join(held) or 'nothing'}")

    async def _refuse(self, slot: Resident, need: int, code: str, message: str) -> None:
        free = max(0, self._ledger.free())
        self._metrics.refusals.labels(slot.spec.alias, code).inc()
        log.warning("%s", message)
        await audit_event(self._audit, "model.refused", {
            "model": slot.spec.alias, "reason": code, "needed_bytes": need, "free_bytes": free})
        raise Unavailable(message, code=code, needed_bytes=need, free_bytes=free,
                          budget_bytes=self._ledger.total)
