"""Residency in this process on the bundled model: loads on demand charge the ledger,
idle unpinned models make room, pinned ones do not, hopeless loads fail at once, idle
timers unload (and follow a power profile switch), a config reload swaps only what
changed."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edged.errors import Conflict, Unavailable
from edged.models.config import ModelsConfig
from edged.models.llama_backend import LlamaBackend
from edged.models.load_cost import estimate
from edged.models.power import PowerMonitor
from edged.models.residency import Residency, Resident
from tests.edgedtest import bundled_alias
from tests.models.local import MiB, Parts, bundled_spec, models_config, running
from tests.models.test_power import RecordingAudit

FIXTURES = Path(__file__).parent / "fixtures"


async def load(r: Residency, alias: str, within: float = 120) -> Resident:
    """Load ``alias`` as a request would (held while loading), then let it go idle."""
    slot = r.resident(alias)
    r.hold(slot)
    try:
        await r.ensure_loaded(slot, asyncio.get_running_loop().time() + within)
    finally:
        r.release(slot)
    return slot


async def until(r: Residency, done: Callable[[], bool]) -> None:
    """Wait on the residency's change notices (no sleeps) until ``done()`` is true."""
    async with asyncio.timeout(60):
        while not done():
            await r.wait_change(r.ps()["generation"])


def whole_cost(bundled: Path, **over: object) -> int:
    """What loading one alias alone costs by the estimate: its own bytes, the weights, the
    runtime's heap."""
    own, shared = estimate(LlamaBackend(), bundled_spec(bundled, **over), bundled, 1)
    return own + sum(shared.values())


async def test_a_load_charges_the_budget_and_an_unload_frees_it(
        tmp_path: Path, bundled_model_path: Path) -> None:
    audit = RecordingAudit()
    parts = Parts(models_config(tmp_path, {"a": bundled_alias(parallel=1)}), audit=audit)
    async with running(parts.residency) as r:
        before = r.ps()["generation"]
        slot = await load(r, "a")
        ps = r.ps()
        assert ps["generation"] > before
        [a] = ps["models"]
        assert a["model"] == "a" and a["state"] == "loaded" and a["in_flight"] == 0
        assert a["parallel"] == 1 and a["threads"] == 1
        assert a["estimated_bytes"] == whole_cost(bundled_model_path)
        assert ps["used_bytes"] == a["bytes"] > 300 * MiB  # the weights and heap, once
        assert parts.sample("edged_model_loaded", model="a") == 1
        assert (await r.catalog_entry("a"))["state"] == "loaded"
        await r.unload("a")
        assert slot.state == "unloaded" and r.ps()["models"] == [] and r.ps()["used_bytes"] == 0
        assert parts.sample("edged_model_evictions_total", model="a", reason="admin") == 1
    kinds = [kind for kind, _actor, _data in audit.events]
    assert kinds == ["model.load", "model.unload"]
    assert audit.events[1][2]["reason"] == "admin"


async def test_an_idle_model_makes_room_and_a_pinned_one_does_not(
        tmp_path: Path, bundled_model_path: Path) -> None:
    # Room for "b" alone (by its estimate), not for "b" next to "a".
    budget = whole_cost(bundled_model_path, context=1024) + MiB
    cfg = models_config(tmp_path, {"a": bundled_alias(parallel=1),
                                   "b": bundled_alias(context=1024, parallel=1)})
    parts = Parts(cfg, budget_bytes=budget)
    async with running(parts.residency) as r:
        await load(r, "a")
        await load(r, "b")  # "a" is idle and unpinned: evicted at once
        assert [m["model"] for m in r.ps()["models"]] == ["b"]
        assert parts.sample("edged_model_evictions_total", model="a", reason="evicted") == 1
        r.keep(r.resident("b"), pin=True)
        with pytest.raises(Unavailable) as e:
            await load(r, "a", within=0.05)  # waits for room until its deadline, then 503
        assert e.value.code == "over_budget"
        assert "'a' needs" in e.value.message and "b (" in e.value.message
        assert "pinned" in e.value.message
        assert r.resident("a").state == "unloaded"
        assert [m["model"] for m in r.ps()["models"]] == ["b"]


async def test_a_model_larger_than_the_whole_budget_fails_at_once(
        tmp_path: Path, bundled_model_path: Path) -> None:
    audit = RecordingAudit()
    cfg = models_config(tmp_path, {"a": bundled_alias(parallel=1),
                                   "huge": bundled_alias(context=32768, parallel=1)})
    budget = whole_cost(bundled_model_path) + 64 * MiB  # "a" fits, "huge" never does
    parts = Parts(cfg, budget_bytes=budget, audit=audit)
    async with running(parts.residency) as r:
        await load(r, "a")
        with pytest.raises(Unavailable) as e:
            await load(r, "huge", within=3600)  # no waiting: it can never fit
        assert e.value.code == "model_too_large"
        assert "more than the whole budget" in e.value.message
        assert [m["model"] for m in r.ps()["models"]] == ["a"]  # nothing evicted for it
    refused = [data for kind, _actor, data in audit.events if kind == "model.refused"]
    assert refused == [{"model": "huge", "reason": "model_too_large",
                        "needed_bytes": whole_cost(bundled_model_path, context=32768),
                        "free_bytes": refused[0]["free_bytes"]}]


async def test_an_idle_model_unloads_on_its_timer_and_a_pinned_one_stays(
        tmp_path: Path, bundled_model_path: Path) -> None:
    cfg = models_config(tmp_path, {"a": bundled_alias(parallel=1),
                                   "p": bundled_alias(parallel=1)},
                        budget={"idle_unload": "20ms"})
    parts = Parts(cfg)
    async with running(parts.residency) as r:
        pinned = r.resident("p")
        r.hold(pinned)
        r.keep(pinned, pin=True)
        await r.ensure_loaded(pinned, asyncio.get_running_loop().time() + 120)
        r.release(pinned)
        slot = await load(r, "a")
        await until(r, lambda: slot.state == "unloaded")
        assert parts.sample("edged_model_evictions_total", model="a", reason="idle") == 1
        assert pinned.state == "loaded"


async def test_a_power_profile_with_a_shorter_idle_unload_applies_to_idle_models(
        tmp_path: Path, bundled_model_path: Path) -> None:
    sysfs = tmp_path / "sys"
    shutil.copytree(FIXTURES / "sysfs_ac", sysfs)
    power_table = {"power_supply_root": str(sysfs / "power_supply"),
                   "thermal_root": str(sysfs / "thermal"),
                   "profiles": {"battery": {"idle_unload": "10ms"}}}
    cfg = models_config(tmp_path, {"a": bundled_alias(parallel=1)},
                        budget={"idle_unload": "1h"}, power=power_table)
    power = PowerMonitor(cfg.power, CollectorRegistry())
    assert await power.refresh() == "ac"
    parts = Parts(cfg, power=power)
    async with running(parts.residency) as r:
        # run() subscribed to the monitor while this load awaited.
        slot = await load(r, "a")  # idle, its timer an hour away
        (sysfs / "power_supply/AC/online").write_text("0\n")
        assert await power.refresh() == "battery"
        await until(r, lambda: slot.state == "unloaded")
        assert r.ps()["profile"] == "battery"


async def test_a_reload_unloads_only_what_changed_and_refuses_while_it_is_busy(
        tmp_path: Path, bundled_model_path: Path) -> None:
    models = {"a": bundled_alias(parallel=1), "b": bundled_alias(parallel=1)}
    cfg = models_config(tmp_path, models)
    parts = Parts(cfg)
    async with running(parts.residency) as r:
        a, b = await load(r, "a"), await load(r, "b")
        changed: ModelsConfig = models_config(
            tmp_path, {"a": models["a"], "b": bundled_alias(context=1024, parallel=1)},
            budget={"memory": "1GiB"})
        r.hold(b)  # a request on "b": the push must wait
        with pytest.raises(Conflict) as e:
            await r.reload(changed)
        assert e.value.code == "model_busy" and "'b'" in e.value.message
        assert r.resident("b") is b and r.ps()["budget_bytes"] == 2 << 30
        r.release(b)
        await r.reload(changed)
        assert r.resident("a") is a and a.state == "loaded"
        assert r.resident("b") is not b and b.state == "unloaded"
        assert r.resident("b").spec.context == 1024
        assert r.ps()["budget_bytes"] == 1 << 30
