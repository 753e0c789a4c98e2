"""Power profiles from sysfs fixture folders (the same file layout the kernel exposes)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from edged.errors import ConfigError
from edged.models.config import PowerConfig, ProfileConfig, parse_models, physical_cores
from edged.models.power import PowerMonitor, PowerReading, ProfileSelector, read_power
from edged.tomlreader import Table

FIXTURES = Path(__file__).parent / "fixtures"


def power_config(root: Path, **over: Any) -> PowerConfig:
    return PowerConfig(power_supply_root=root / "power_supply", thermal_root=root / "thermal",
                       poll_interval=over.pop("poll_interval", 30.0),
                       low_battery_percent=20.0, hot_celsius=80.0, **over)


def parsed_power(power: Mapping[str, Any]) -> PowerConfig:
    return parse_models(Table({"power": dict(power)}), Path("/tmp")).power


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """A writable copy of the laptop-on-AC fixture, to unplug and heat up."""
    shutil.copytree(FIXTURES / "sysfs_ac", tmp_path / "sys")
    return tmp_path / "sys"


@pytest.mark.parametrize(("fixture", "expected"), [
    ("sysfs_ac", PowerReading(False, 80.0, 41.0)),
    ("sysfs_battery", PowerReading(True, 55.0, 45.5)),  # energy_now/energy_full beats capacity
    ("sysfs_ups_low", PowerReading(True, 12.0, 52.0)),  # no mains entry: the UPS status decides
    ("sysfs_hot", PowerReading(False, None, 91.0)),  # a broken zone's 4294 C is ignored
    ("sysfs_mouse", PowerReading(False, None, None)),  # a peripheral's battery is not ours
])
def test_reads_sysfs_like_psutil(fixture: str, expected: PowerReading) -> None:
    assert read_power(power_config(FIXTURES / fixture)) == expected


@pytest.mark.parametrize(("fixture", "profile"), [
    ("sysfs_ac", "ac"), ("sysfs_battery", "battery"), ("sysfs_ups_low", "low_battery"),
    ("sysfs_hot", "hot")])
async def test_profile_of_each_fixture(fixture: str, profile: str) -> None:
    monitor = PowerMonitor(power_config(FIXTURES / fixture), CollectorRegistry())
    assert await monitor.refresh() == profile


async def test_missing_sysfs_means_ac(tmp_path: Path) -> None:
    monitor = PowerMonitor(power_config(tmp_path / "no-such-sys"), CollectorRegistry())
    assert await monitor.refresh() == "ac"
    assert monitor.health() == {"profile": "ac", "on_battery": False,
                                "battery_percent": None, "temperature_c": None}
    assert monitor.generation == 0


def test_hot_outranks_low_battery_outranks_battery() -> None:
    sel = ProfileSelector(power_config(FIXTURES))
    assert sel.select(PowerReading(True, 10.0, 85.0)) == "hot"
    assert sel.select(PowerReading(True, 10.0, 40.0)) == "low_battery"
    assert sel.select(PowerReading(True, 60.0, 40.0)) == "battery"
    assert sel.select(PowerReading(False, 10.0, 40.0)) == "ac"  # low charge but plugged in


def test_hysteresis_stops_flapping() -> None:
    sel = ProfileSelector(power_config(FIXTURES))
    temps = [79.9, 80.0, 79.0, 76.0, 75.1, 74.9, 79.9]
    assert [sel.select(PowerReading(False, None, t)) for t in temps] == [
        "ac", "hot", "hot", "hot", "hot", "ac", "ac"]
    charge = [21.0, 20.0, 22.0, 25.0, 25.1, 21.0]
    assert [sel.select(PowerReading(True, c, None)) for c in charge] == [
        "battery", "low_battery", "low_battery", "low_battery", "battery", "battery"]


async def test_switch_notifies_and_shows_in_metrics(box: Path) -> None:
    registry = CollectorRegistry()
    audit = RecordingAudit()
    monitor = PowerMonitor(power_config(box), registry, audit)
    seen: list[tuple[str, ProfileConfig]] = []
    monitor.subscribe(lambda name, settings: seen.append((name, settings)))
    assert await monitor.refresh() == "ac"
    assert seen == [] and monitor.generation == 0

    (box / "power_supply/AC/online").write_text("0\n")
    assert await monitor.refresh() == "battery"
    assert monitor.generation == 1
    assert seen == [("battery", monitor.settings)]
    assert monitor.settings.idle_unload == 60.0  # the built-in battery default
    text = generate_latest(registry).decode()
    assert 'edged_power_profile{profile="battery"} 1.0' in text
    assert 'edged_power_profile{profile="ac"} 0.0' in text
    assert "edged_power_on_battery 1.0" in text
    assert audit.events == [("power.profile", "daemon", {
        "from": "ac", "to": "battery", "on_battery": True, "battery_percent": 80.0,
        "temperature_c": 41.0})]


async def test_run_polls_until_the_profile_changes(box: Path) -> None:
    monitor = PowerMonitor(power_config(box, poll_interval=0.01), CollectorRegistry())
    task = asyncio.create_task(monitor.run())
    try:
        waiting = asyncio.create_task(monitor.wait_change(monitor.generation))
        (box / "thermal/thermal_zone0/temp").write_text("95000\n")
        assert await asyncio.wait_for(waiting, 30) == "hot"
        assert monitor.settings.threads == 1
        assert monitor.health()["temperature_c"] == 95.0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_reconfigure_applies_new_thresholds_at_once(box: Path) -> None:
    monitor = PowerMonitor(power_config(box), CollectorRegistry())
    assert await monitor.refresh() == "ac"
    cooler = power_config(box, profiles={"hot": ProfileConfig(2, None, None, False)})
    cooler = dataclasses.replace(cooler, hot_celsius=40.0)
    assert await monitor.reconfigure(cooler) == "hot"  # the fixture's zone is at 41 C
    assert monitor.settings == ProfileConfig(2, None, None, False)
    assert monitor.generation == 1


def test_profiles_default_and_override_key_by_key() -> None:
    cfg = parsed_power({"profiles": {"low_battery": {"threads": 2}}})
    assert set(cfg.profiles) == {"ac", "battery", "low_battery", "hot"}
    assert cfg.profile("low_battery") == ProfileConfig(
        threads=2, idle_unload=30.0, max_loaded=1, prefer_smaller=True)
    assert cfg.profile("ac") == ProfileConfig(None, None, None, False)
    assert cfg.profile("hot").threads == 1


@pytest.mark.parametrize(("power", "message"), [
    ({"profiles": {"turbo": {}}}, "power.profiles.turbo: unknown profile"),
    ({"profiles": {"hot": {"threads": 0}}}, "power.profiles.hot.threads: 0 is below"),
    ({"profiles": {"hot": {"cores": 1}}}, "power.profiles.hot.cores: unknown key"),
    ({"poll_interval": 0}, "power.poll_interval: must be above 0"),
    ({"hot_celsius": "hot"}, "power.hot_celsius: expected a number"),
])
def test_bad_power_config_names_the_key(power: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parsed_power(power)


class RecordingAudit:
    """An AuditSink that keeps events in memory (the audit log itself is tested in audit/)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    async def append(self, kind: str, actor: str, data: Mapping[str, Any]) -> int:
        self.events.append((kind, actor, dict(data)))
        return len(self.events)


def test_daemon_shows_the_profile_and_the_cgroup_budget(edged: Any) -> None:
    """The real daemon on a battery-powered box in a 512 MiB cgroup: the profile is in
    /health and /metrics from READY on, and the budget is cut to the cgroup limit."""
    sysfs = FIXTURES / "sysfs_battery"
    d = edged({"budget": {"memory": "2GiB"},
               "power": {"power_supply_root": str(sysfs / "power_supply"),
                         "thermal_root": str(sysfs / "thermal"),
                         "cgroup_root": str(FIXTURES / "cgroup_container")}})
    assert d.client.get("/health")["power"] == {
        "profile": "battery", "on_battery": True, "battery_percent": 55.0,
        "temperature_c": 45.5}
    assert 'edged_power_profile{profile="battery"} 1.0' in d.client.get("/metrics")
    ps = d.client.get("/admin/ps")
    assert ps["profile"] == "battery"
    assert ps["budget_bytes"] == 512 * 1024 * 1024


def _topology(root: Path, cpu: int, package: int, core: int) -> None:
    topo = root / f"cpu{cpu}" / "topology"
    topo.mkdir(parents=True)
    (topo / "physical_package_id").write_text(f"{package}\n")
    (topo / "core_id").write_text(f"{core}\n")


def test_threads_default_to_physical_cores_not_hyperthreads(tmp_path: Path) -> None:
    usable = sorted(os.sched_getaffinity(0))
    for cpu in usable:  # every usable CPU a hyperthread sibling of one core
        _topology(tmp_path / "siblings", cpu, 0, 0)
        _topology(tmp_path / "cores", cpu, 0, cpu)
    assert physical_cores(tmp_path / "siblings") == 1
    assert physical_cores(tmp_path / "cores") == len(usable)
    assert 1 <= physical_cores(tmp_path / "missing") <= len(usable)
