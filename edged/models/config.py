"""Config of the ``[models.*]`` catalog, ``[budget]`` and ``[power]`` sections."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edged.errors import ConfigError
from edged.tomlreader import Table

PROFILE_NAMES = ("ac", "battery", "low_battery", "hot")


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    format: str  # gguf | onnx
    path: Path | None  # a local file
    package: str | None  # or an installed Python package that carries the file
    sha256: str | None
    context: int
    threads: int | None
    chat_format: str
    variants: tuple[str, ...]  # smaller aliases to prefer under power pressure
    embedding: bool
    kind: str  # chat | embedding | classifier


@dataclass(frozen=True)
class BudgetConfig:
    memory_bytes: int | None  # absolute bytes, or
    memory_percent: float | None  # a share of RAM (of the cgroup limit when one is set)
    idle_unload: float
    queue_size: int
    request_timeout: float


@dataclass(frozen=True)
class ProfileConfig:
    threads: int | None
    idle_unload: float | None
    max_loaded: int | None
    prefer_smaller: bool


@dataclass(frozen=True)
class PowerConfig:
    power_supply_root: Path
    thermal_root: Path
    poll_interval: float
    low_battery_percent: float
    hot_celsius: float
    profiles: dict[str, ProfileConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelsConfig:
    catalog: dict[str, ModelSpec]
    default: str | None
    cache_dir: Path
    budget: BudgetConfig
    power: PowerConfig


def _parse_spec(alias: str, t: Table) -> ModelSpec:
    fmt = t.choice("format", ("gguf", "onnx"), "gguf")
    path = t.path("path", None)
    package = t.str("package", None)
    if (path is None) == (package is None):
        raise ConfigError(f"{t.key('path')}: give exactly one of path or package")
    sha = t.str("sha256", None)
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ConfigError(f"{t.key('sha256')}: expected 64 lowercase hex digits")
    spec = ModelSpec(
        alias=alias, format=fmt, path=path, package=package, sha256=sha,
        context=t.int("context", 2048, min=128, max=1 << 20),
        threads=t.int("threads", None, min=1, max=256),
        chat_format=t.str("chat_format", "gemma"),
        variants=t.str_list("variants", ()),
        embedding=t.bool("embedding", True),
        kind=t.choice("kind", ("chat", "embedding", "classifier"), "chat"),
    )
    t.done()
    return spec


def _parse_budget(t: Table) -> BudgetConfig:
    raw = t.raw("memory", "75%")
    pct: float | None = None
    size: int | None = None
    if isinstance(raw, str) and raw.strip().endswith("%"):
        try:
            pct = float(raw.strip()[:-1])
        except ValueError:
            raise ConfigError(f"{t.key('memory')}: {raw!r} is not a percentage") from None
        if not 0 < pct <= 100:
            raise ConfigError(f"{t.key('memory')}: {raw!r} must be between 0% and 100%")
    else:
        size = t.size("memory")
    cfg = BudgetConfig(
        memory_bytes=size, memory_percent=pct,
        idle_unload=t.duration("idle_unload", 300.0),
        queue_size=t.int("queue_size", 16, min=1, max=10_000),
        request_timeout=t.duration("request_timeout", 120.0),
    )
    t.done()
    return cfg


def _parse_profile(t: Table) -> ProfileConfig:
    cfg = ProfileConfig(
        threads=t.int("threads", None, min=1, max=256),
        idle_unload=t.duration("idle_unload", None),
        max_loaded=t.int("max_loaded", None, min=1, max=64),
        prefer_smaller=t.bool("prefer_smaller", False),
    )
    t.done()
    return cfg


def _parse_power(t: Table) -> PowerConfig:
    profiles_t = t.tables("profiles")
    for name in profiles_t:
        if name not in PROFILE_NAMES:
            raise ConfigError(f"{t.key('profiles')}.{name}: unknown profile "
                              f"(expected one of {', '.join(PROFILE_NAMES)})")
    cfg = PowerConfig(
        power_supply_root=t.path("power_supply_root", Path("/sys/class/power_supply")),
        thermal_root=t.path("thermal_root", Path("/sys/class/thermal")),
        poll_interval=t.duration("poll_interval", 30.0),
        low_battery_percent=t.float("low_battery_percent", 20.0, min=0, max=100),
        hot_celsius=t.float("hot_celsius", 80.0, min=0, max=150),
        profiles={name: _parse_profile(pt) for name, pt in profiles_t.items()},
    )
    t.done()
    return cfg


def parse_models(root: Table, state_dir: Path) -> ModelsConfig:
    models_t = root.table("models")
    default = models_t.str("default", None)
    cache_dir = models_t.path("cache_dir", state_dir / "models")
    catalog: dict[str, ModelSpec] = {}
    for alias in list(models_t.keys()):
        if alias in ("default", "cache_dir"):
            continue
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", alias):
            raise ConfigError(f"models.{alias}: an alias is letters, digits, '.', '_' or '-'")
        catalog[alias] = _parse_spec(alias, models_t.table(alias))
    models_t.done()
    if default is not None and default not in catalog:
        raise ConfigError(f"models.default: {default!r} is not a model alias")
    for spec in catalog.values():
        for v in spec.variants:
            if v not in catalog:
                raise ConfigError(f"models.{spec.alias}.variants: {v!r} is not a model alias")
    return ModelsConfig(
        catalog=catalog, default=default, cache_dir=cache_dir,
        budget=_parse_budget(root.table("budget")),
        power=_parse_power(root.table("power")),
    )
