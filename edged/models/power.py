"""Power profiles from AC, battery and thermal state read in sysfs.

The files are the ones psutil reads (``/sys/class/power_supply/*/{type,online,capacity,
status}``, ``/sys/class/thermal/thermal_zone*/{temp,type}``), read here directly because
psutil's readers do not take a root and tests point the roots at fixture folders. A missing
folder (VMs, containers, desktops) reads as "on AC, no sensor": that is the ``ac`` profile,
not an error.

A profile only changes what the model manager uses for the NEXT load (threads, idle
timeout, how many models may stay loaded, whether to prefer smaller variants). Requests in
flight and loaded models are never touched by a switch, so a switch never drops a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from edged.audit.sink import AuditSink
from edged.config import Config
from edged.models.config import PROFILE_NAMES, PowerConfig, ProfileConfig

log = logging.getLogger(__name__)

ProfileListener = Callable[[str, ProfileConfig], None]


@dataclass(frozen=True)
class PowerReading:
    on_battery: bool
    battery_percent: float | None  # None: no battery
    temperature_c: float | None  # hottest thermal zone; None: no sensor


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):  # sysfs attributes vanish and fail with EIO/ENODEV
        return None


def _read_number(path: Path) -> float | None:
    text = _read(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _supplies(root: Path) -> list[tuple[str, Path]]:
    """(type, folder) of each supply that powers the box: a wireless mouse's battery has
    ``scope`` "Device" and must not put a kiosk into low_battery."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    return [(_read(e / "type") or "", e) for e in entries if _read(e / "scope") != "Device"]


def _battery_percent(battery: Path) -> float | None:
    """Like psutil: energy (or charge) now/full when present, else ``capacity``."""
    for now_name, full_name in (("energy_now", "energy_full"), ("charge_now", "charge_full")):
        now, full = _read_number(battery / now_name), _read_number(battery / full_name)
        if now is not None and full:
            return max(0.0, min(100.0, 100.0 * now / full))
    return _read_number(battery / "capacity")


def _on_battery(mains: list[Path], batteries: list[Path]) -> bool:
    """A mains supply (``online``) decides when there is one; otherwise a battery that says
    it is discharging (UPS units often expose only that)."""
    if not batteries:  # whatever powers a box without a battery, it is not one
        return False
    online = [_read_number(m / "online") for m in mains]
    known = [o for o in online if o is not None]
    if known:
        return not any(o >= 1 for o in known)
    return any((_read(b / "status") or "").lower() == "discharging" for b in batteries)


def read_power_supply(root: Path) -> tuple[bool, float | None]:
    """(on_battery, battery_percent) from a ``power_supply`` folder; the first battery by
    name gives the percentage, as in psutil."""
    supplies = _supplies(root)
    mains = [p for kind, p in supplies if kind in ("Mains", "USB")]
    batteries = [p for kind, p in supplies if kind in ("Battery", "UPS")]
    percent = next((v for v in map(_battery_percent, batteries) if v is not None), None)
    return _on_battery(mains, batteries), percent


def read_temperature(root: Path) -> float | None:
    """The hottest thermal zone in degrees Celsius (sysfs gives millidegrees)."""
    temps = [_read_number(zone / "temp") for zone in sorted(root.glob("thermal_zone*"))]
    # Broken zones report 0 or huge values; keep the physically plausible ones.
    plausible = [t / 1000.0 for t in temps if t is not None and -40_000 < t < 200_000]
    return max(plausible, default=None)


def read_power(cfg: PowerConfig) -> PowerReading:
    """One reading of every sensor (blocking file reads: run it off the loop)."""
    on_battery, percent = read_power_supply(cfg.power_supply_root)
    return PowerReading(on_battery, percent, read_temperature(cfg.thermal_root))


class ProfileSelector:
    """hot > low_battery > battery > ac, with hysteresis on the two thresholds so a reading
    hovering around one does not make the profile flap."""

    def __init__(self, cfg: PowerConfig) -> None:
        self._cfg = cfg
        self._hot = False
        self._low = False

    def select(self, r: PowerReading) -> str:
        self._hot = self._is_hot(r.temperature_c)
        self._low = self._is_low(r)
        if self._hot:
            return "hot"
        if self._low:
            return "low_battery"
        return "battery" if r.on_battery else "ac"

    def _is_hot(self, temp: float | None) -> bool:
        if temp is None:
            return False
        band = self._cfg.hysteresis_celsius if self._hot else 0.0
        return temp >= self._cfg.hot_celsius - band

    def _is_low(self, r: PowerReading) -> bool:
        if not r.on_battery or r.battery_percent is None:
            return False
        band = self._cfg.hysteresis_percent if self._low else 0.0
        return r.battery_percent <= self._cfg.low_battery_percent + band


class PowerMonitor:
    """Polls sysfs every ``poll_interval`` (sysfs sends no change events) and keeps the
    active profile. The manager reads ``settings`` before each load, and ``subscribe`` or
    ``wait_change`` tell it when the profile changed (to shorten idle timers, say)."""

    def __init__(self, cfg: PowerConfig, registry: CollectorRegistry,
                 audit: AuditSink | None = None) -> None:
        self._cfg = cfg
        self._audit = audit
        self._selector = ProfileSelector(cfg)
        self._profile = "ac"
        self._reading = PowerReading(False, None, None)
        self._generation = 0
        self._changed = asyncio.Event()
        self._listeners: list[ProfileListener] = []
        self._gauges = _PowerGauges(registry)
        self._gauges.show(self._profile, self._reading)

    @property
    def profile(self) -> str:
        return self._profile

    @property
    def settings(self) -> ProfileConfig:
        """The active profile's settings, to apply to the next load."""
        return self._cfg.profile(self._profile)

    @property
    def reading(self) -> PowerReading:
        return self._reading

    @property
    def generation(self) -> int:
        """Counts profile changes; pass it to ``wait_change``."""
        return self._generation

    def subscribe(self, listener: ProfileListener) -> Callable[[], None]:
        """Call ``listener(profile, settings)`` on the loop after each change; returns an
        unsubscribe function. Listeners must not block."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def wait_change(self, since: int) -> str:
        """Return the profile once ``generation`` has moved past ``since``."""
        while self._generation == since:
            await self._changed.wait()
        return self._profile

    def health(self) -> dict[str, Any]:
        r = self._reading
        return {"profile": self._profile, "on_battery": r.on_battery,
                "battery_percent": r.battery_percent, "temperature_c": r.temperature_c}

    async def refresh(self) -> str:
        """Read the sensors once and switch profile if needed; returns the active profile."""
        reading = await asyncio.to_thread(read_power, self._cfg)
        self._reading = reading
        profile = self._selector.select(reading)
        self._gauges.show(profile, reading)
        if profile != self._profile:
            await self._switch(profile)
        return profile

    async def reconfigure(self, cfg: PowerConfig) -> str:
        """Take a new ``[power]`` section in place (a config push): new roots, thresholds and
        profile settings apply from a fresh reading, now. Loaded models are not touched."""
        self._cfg = cfg
        self._selector = ProfileSelector(cfg)
        return await self.refresh()

    async def reload(self, config: Config) -> None:
        """``Reloadable`` (edged/remote/reload.py): the [power] section of a pushed config."""
        await self.reconfigure(config.models.power)

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._cfg.poll_interval)

    async def _switch(self, profile: str) -> None:
        previous, self._profile = self._profile, profile
        self._generation += 1
        # Wake every waiter, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
        log.info("power profile %s -> %s (%s)", previous, profile, self._reading)
        for listener in list(self._listeners):
            listener(profile, self.settings)
        await self._record(previous, profile)

    async def _record(self, previous: str, profile: str) -> None:
        if self._audit is None:
            return
        r = self._reading
        try:
            await self._audit.append("power.profile", "daemon", {
                "from": previous, "to": profile, "on_battery": r.on_battery,
                "battery_percent": r.battery_percent, "temperature_c": r.temperature_c})
        except Exception:  # the switch stands; a failing audit log is that component's alarm
            log.exception("could not audit the power profile switch to %s", profile)


class _PowerGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.profile = Gauge("edged_power_profile", "1 for the active power profile",
                             ["profile"], registry=registry)
        self.on_battery = Gauge("edged_power_on_battery", "1 when running on battery",
                                registry=registry)
        self.battery = Gauge("edged_power_battery_percent",
                             "battery charge (NaN: no battery)", registry=registry)
        self.temperature = Gauge("edged_power_temperature_celsius",
                                 "hottest thermal zone (NaN: no sensor)", registry=registry)

    def show(self, profile: str, r: PowerReading) -> None:
        for name in PROFILE_NAMES:
            self.profile.labels(profile=name).set(1 if name == profile else 0)
        self.on_battery.set(1 if r.on_battery else 0)
        self.battery.set(float("nan") if r.battery_percent is None else r.battery_percent)
        self.temperature.set(float("nan") if r.temperature_c is None else r.temperature_c)
