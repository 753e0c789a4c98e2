"""Admission in this process on the bundled model: the queue bound and Retry-After, start
deadlines, routing to a smaller variant under a power profile, streams, callers that go
away."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from edged.errors import QueueFull, Unavailable
from edged.models.admission import Admission
from edged.models.backend import LoadedModel
from edged.models.contract import GenerateParams
from edged.models.jobs import generate_job
from edged.models.power import PowerMonitor
from tests.edgedtest import bundled_alias
from tests.models.local import Parts, models_config, running

FIXTURES = Path(__file__).parent / "fixtures"
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"


@pytest.fixture
async def parts(tmp_path: Path, bundled_model_path: Path) -> AsyncIterator[Parts]:
    """One sequence and room for one waiting request."""
    cfg = models_config(tmp_path, {"g": bundled_alias(parallel=1)},
                        budget={"queue_size": 1, "request_timeout": "1m"})
    parts = Parts(cfg)
    async with running(parts.residency):
        yield parts


def admission(parts: Parts) -> Admission:
    return Admission(parts.cfg.budget, residency=parts.residency, metrics=parts.metrics)


class Blocker:
    """A job that holds the model's only sequence until ``gate`` opens."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.gate = threading.Event()

    def make(self, _cancel: threading.Event) -> Callable[[LoadedModel], str]:
        def run(_model: LoadedModel) -> str:
            self.running.set()
            self.gate.wait(60)
            return "done"
        return run


async def test_a_full_queue_refuses_with_retry_after(parts: Parts) -> None:
    adm = admission(parts)
    blocker = Blocker()
    first = asyncio.create_task(adm.call("g", GenerateParams(), blocker.make))
    try:
        await asyncio.to_thread(blocker.running.wait, 120)  # loaded, and its sequence busy
        async with adm.use("g", GenerateParams()) as (slot, _deadline):  # waits: admitted
            assert slot.active == 2
            with pytest.raises(QueueFull) as e:  # a third finds the queue full
                await adm.call("g", GenerateParams(), blocker.make)
            assert e.value.retry_after >= 1.0
            assert "'g' has 1 requests waiting (budget.queue_size = 1)" in e.value.message
            assert parts.sample("edged_model_refusals_total", model="g",
                                reason="queue_full") == 1
            assert parts.sample("edged_model_queue_depth", model="g") == 2
    finally:
        blocker.gate.set()
    assert await first == "done"
    assert parts.residency.resident("g").active == 0
    assert parts.sample("edged_model_queue_depth", model="g") == 0


async def test_a_job_that_cannot_start_by_its_deadline_is_refused(parts: Parts) -> None:
    adm = admission(parts)
    ran: list[str] = []
    await adm.call("g", GenerateParams(), lambda _c: lambda _m: ran.append("loaded"))
    past = asyncio.get_running_loop().time() - 1
    with pytest.raises(Unavailable, match="passed its deadline") as e:
        await adm.call("g", GenerateParams(deadline=past), lambda _c: lambda _m: ran.append("x"))
    assert e.value.code == "deadline_exceeded" and ran == ["loaded"]


async def test_a_caller_that_goes_away_sets_its_cancel_flag(parts: Parts) -> None:
    adm = admission(parts)
    started = threading.Event()
    seen: list[bool] = []

    def make(cancel: threading.Event) -> Callable[[LoadedModel], None]:
        def run(_model: LoadedModel) -> None:
            started.set()
            seen.append(cancel.wait(60))  # what a generation checks at each token
        return run

    task = asyncio.create_task(adm.call("g", GenerateParams(), make))
    await asyncio.to_thread(started.wait, 120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    slot = parts.residency.resident("g")
    assert slot.active == 0
    await adm.call("g", GenerateParams(), lambda _c: lambda _m: None)  # the worker is free
    assert seen == [True]


async def test_a_stream_hands_over_pieces_and_its_result_and_closing_it_stops(
        parts: Parts) -> None:
    adm = admission(parts)

    def counting(params: GenerateParams) -> Any:
        return adm.stream("g", params, lambda sink, cancel: generate_job(
            parts.metrics, "g", COUNTING, params, sink, cancel))

    whole = counting(GenerateParams(max_tokens=8, temperature=0))  # a base model keeps counting
    pieces = [p async for p in whole]
    assert whole.result is not None and "".join(pieces) == whole.result.text
    assert whole.result.completion_tokens == 8
    cut = counting(GenerateParams(max_tokens=64, temperature=0))
    assert await cut.__anext__()
    await cut.aclose()  # returns once the job has ended
    assert parts.residency.resident("g").active == 0
    assert parts.sample("edged_model_tokens_total", model="g") < 8 + 32


async def test_a_low_battery_profile_routes_to_the_smaller_variant(
        tmp_path: Path, bundled_model_path: Path) -> None:
    ups = FIXTURES / "sysfs_ups_low"
    cfg = models_config(tmp_path, {"big": bundled_alias(variants=["small"]),
                                   "small": bundled_alias()},
                        power={"power_supply_root": str(ups / "power_supply"),
                               "thermal_root": str(ups / "thermal")})
    power = PowerMonitor(cfg.power, CollectorRegistry())
    parts = Parts(cfg, power=power)
    adm = Admission(cfg.budget, residency=parts.residency, metrics=parts.metrics)
    assert adm.route("big") == "big"  # on mains until the sensors are read
    assert await power.refresh() == "low_battery"
    assert adm.route("big") == "small" and adm.route("small") == "small"


async def test_configure_takes_a_new_queue_bound_and_timeout(parts: Parts, tmp_path: Path
                                                             ) -> None:
    adm = admission(parts)
    assert adm.request_timeout() == 60.0
    wider = models_config(tmp_path, {}, budget={"queue_size": 2, "request_timeout": "5s"})
    adm.configure(wider.budget)
    assert adm.request_timeout() == 5.0
    blocker = Blocker()
    first = asyncio.create_task(adm.call("g", GenerateParams(), blocker.make))
    try:
        await asyncio.to_thread(blocker.running.wait, 120)
        async with adm.use("g", GenerateParams()), adm.use("g", GenerateParams()):
            with pytest.raises(QueueFull, match=r"budget\.queue_size = 2"):
                await adm.call("g", GenerateParams(), blocker.make)
    finally:
        blocker.gate.set()
    assert await first == "done"
