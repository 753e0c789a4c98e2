"""Residency in this process on the bundled model: loads on demand charge the ledger and
are audited, idle timers unload (and follow a power profile switch), a config reload
swaps only what changed. Making room is in test_eviction.py."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edged.errors import Conflict
from edged.models.config import ModelsConfig
from edged.models.power import PowerMonitor
from tests.edgedtest import bundled_alias
from tests.models.local import MiB, Parts, load, models_config, running, until, whole_cost
from tests.models.test_power import RecordingAudit

FIXTURES = Path(__file__).parent / "fixtures"


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
