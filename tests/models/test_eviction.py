"""Making room for a load, through a real Residency on the bundled model: an idle
unpinned model is evicted at once, least recently used first; a pinned or busy one is
not, and the load waits until its deadline, then 503 names what holds the budget; a
model larger than the whole budget fails at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edged.errors import Unavailable
from edged.models.power import PowerMonitor
from tests.edgedtest import bundled_alias
from tests.models.local import MiB, Parts, load, models_config, running, whole_cost
from tests.models.test_power import RecordingAudit

FIXTURES = Path(__file__).parent / "fixtures"


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


async def capped(tmp_path: Path, max_loaded: int) -> Parts:
    """Three aliases, room for all in the budget, at most ``max_loaded`` by the profile."""
    ac = FIXTURES / "sysfs_ac"
    cfg = models_config(tmp_path, {alias: bundled_alias(parallel=1) for alias in "abc"},
                        power={"power_supply_root": str(ac / "power_supply"),
                               "thermal_root": str(ac / "thermal"),
                               "profiles": {"ac": {"max_loaded": max_loaded}}})
    power = PowerMonitor(cfg.power, CollectorRegistry())
    assert await power.refresh() == "ac"
    return Parts(cfg, power=power)


async def test_the_least_recently_used_idle_model_goes_first(
        tmp_path: Path, bundled_model_path: Path) -> None:
    parts = await capped(tmp_path, 2)
    async with running(parts.residency) as r:
        await load(r, "a")
        await load(r, "b")
        await load(r, "a")  # used again: now "b" is the least recently used
        await load(r, "c")
        assert sorted(m["model"] for m in r.ps()["models"]) == ["a", "c"]
        await load(r, "b")  # and now "a" is
        assert sorted(m["model"] for m in r.ps()["models"]) == ["b", "c"]
        assert parts.sample("edged_model_evictions_total", model="a", reason="evicted") == 1
        assert parts.sample("edged_model_evictions_total", model="b", reason="evicted") == 1


async def test_a_busy_model_is_never_evicted(tmp_path: Path, bundled_model_path: Path) -> None:
    parts = await capped(tmp_path, 1)
    async with running(parts.residency) as r:
        a = await load(r, "a")
        r.hold(a)  # a request on "a"
        with pytest.raises(Unavailable) as e:
            await load(r, "b", within=0.05)
        assert e.value.code == "over_budget" and "held by: a (" in e.value.message
        assert "busy" in e.value.message and a.state == "loaded"
        r.release(a)
        await load(r, "b")  # idle now: evicted for "b"
        assert [m["model"] for m in r.ps()["models"]] == ["b"]
