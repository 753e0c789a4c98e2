"""Config of the ``[models.*]`` catalog, ``[budget]`` and ``[power]`` sections."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from edged.errors import ConfigError
from edged.models.chat_format import FORMATS
from edged.models.remote_config import RemoteSpec, is_remote, parse_remote_spec
from edged.tomlreader import Table

PROFILE_NAMES = ("ac", "battery", "low_battery", "hot")
MAX_PARALLEL = 64


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
    tool_rounds: int = 1  # rounds of tool calls in a row before "auto" answers in text
    parallel: int | None = None  # GGUF sequences decoded together; None: from the budget
    prefix_cache: int | None = None  # ended sequences kept as shared prefixes; None: parallel


@dataclass(frozen=True)
class BudgetConfig:
    memory_bytes: int | None  # absolute bytes, or
    memory_percent: float | None  # a share of RAM (of the cgroup limit when one is set)
    idle_unload: float
    queue_size: int
    request_timeout: float


@dataclass(frozen=True)
class ProfileConfig:
    """What a power profile changes for the NEXT load. ``None`` means "no override": the
    model's own ``threads``, ``budget.idle_unload``, no cap on loaded models."""

    threads: int | None
    idle_unload: float | None
    max_loaded: int | None
    prefer_smaller: bool


def physical_cores(cpu_root: Path = Path("/sys/devices/system/cpu")) -> int:
    """Physical cores among the CPUs this process may use: one llama.cpp thread per core, as
    llama.cpp and Ollama default to (a second thread on a core's hyperthread sibling slows
    decoding down). Read from sysfs topology; without it, psutil's count capped by the
    usable CPUs."""
    cpus = _affinity()
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topo = cpu_root / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(),
                       (topo / "core_id").read_text().strip()))
        except OSError:
            return _counted_cores(len(cpus))
    return len(cores) or _counted_cores(len(cpus))


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def _counted_cores(usable: int) -> int:
    import psutil
    return max(1, min(usable, psutil.cpu_count(logical=False) or usable))


def default_profile(name: str) -> ProfileConfig:
    """Built-in settings of a profile; a ``[power.profiles.NAME]`` table overrides them key by
    key. On battery: half the physical cores and a short idle timeout; on low battery or when hot:
    one thread and smaller variants, and on low battery only one loaded model."""
    if name == "battery":
        return ProfileConfig(threads=max(1, physical_cores() // 2), idle_unload=60.0,
                             max_loaded=None, prefer_smaller=False)
    if name == "low_battery":
        return ProfileConfig(threads=1, idle_unload=30.0, max_loaded=1, prefer_smaller=True)
    if name == "hot":
        return ProfileConfig(threads=1, idle_unload=None, max_loaded=None, prefer_smaller=True)
    return ProfileConfig(threads=None, idle_unload=None, max_loaded=None, prefer_smaller=False)


@dataclass(frozen=True)
class PowerConfig:
    power_supply_root: Path
    thermal_root: Path
    poll_interval: float
    low_battery_percent: float
    hot_celsius: float
    # Bands that stop flapping: leave "hot" only below hot_celsius - hysteresis_celsius, and
    # "low_battery" only above low_battery_percent + hysteresis_percent (or on AC).
    hysteresis_celsius: float = 5.0
    hysteresis_percent: float = 5.0
    # Where the cgroup v2 hierarchy is mounted (memory.max), read with the other sensors.
    cgroup_root: Path = Path("/sys/fs/cgroup")
    profiles: dict[str, ProfileConfig] = field(default_factory=dict)

    def profile(self, name: str) -> ProfileConfig:
        return self.profiles.get(name) or default_profile(name)


@dataclass(frozen=True)
class ModelsConfig:
    catalog: dict[str, ModelSpec]
    default: str | None
    cache_dir: Path
    budget: BudgetConfig
    power: PowerConfig
    # Remote aliases (format = "openai"): never in the catalog, never charged to the budget.
    remote: dict[str, RemoteSpec] = field(default_factory=dict)


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
        chat_format=t.choice("chat_format", tuple(FORMATS), "gemma-base"),
        variants=t.str_list("variants", ()),
        embedding=t.bool("embedding", True),
        kind=t.choice("kind", ("chat", "embedding", "classifier"), "chat"),
        tool_rounds=t.int("tool_rounds", 1, min=1, max=64),
        parallel=t.int("parallel", None, min=1, max=MAX_PARALLEL),
        prefix_cache=t.int("prefix_cache", None, min=0, max=MAX_PARALLEL),
    )
    if fmt == "onnx" and package is not None:
        _check_packaged_encoder(spec, t)
    t.done()
    return spec


def _check_packaged_encoder(spec: ModelSpec, t: Table) -> None:
    """A packaged ONNX model carries weights that edged builds a graph from; the pin on
    those weights is what names the built graph, so it is required."""
    if spec.sha256 is None:
        raise ConfigError(f"{t.key('sha256')}: a packaged ONNX encoder needs the sha256 of "
                          "its model.safetensors")
    if spec.kind != "embedding":
        raise ConfigError(f"{t.key('kind')}: a packaged ONNX encoder is kind = \"embedding\"")


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


def _parse_profile(t: Table, base: ProfileConfig) -> ProfileConfig:
    """Keys left out keep the built-in value of that profile."""
    cfg = ProfileConfig(
        threads=t.int("threads", base.threads, min=1, max=256),
        idle_unload=t.duration("idle_unload", base.idle_unload),
        max_loaded=t.int("max_loaded", base.max_loaded, min=1, max=64),
        prefer_smaller=t.bool("prefer_smaller", base.prefer_smaller),
    )
    t.done()
    return cfg


def _parse_profiles(t: Table) -> dict[str, ProfileConfig]:
    """All four profiles: the built-in settings, overridden by ``[power.profiles.NAME]``."""
    given = t.tables("profiles")
    for name in given:
        if name not in PROFILE_NAMES:
            raise ConfigError(f"{t.key('profiles')}.{name}: unknown profile "
                              f"(expected one of {', '.join(PROFILE_NAMES)})")
    empty = Table({}, t.key("profiles"))
    return {name: _parse_profile(given.get(name, empty), default_profile(name))
            for name in PROFILE_NAMES}


def _parse_power(t: Table) -> PowerConfig:
    cfg = PowerConfig(
        power_supply_root=t.path("power_supply_root", Path("/sys/class/power_supply")),
        thermal_root=t.path("thermal_root", Path("/sys/class/thermal")),
        poll_interval=t.duration("poll_interval", 30.0),
        low_battery_percent=t.float("low_battery_percent", 20.0, min=0, max=100),
        hot_celsius=t.float("hot_celsius", 80.0, min=0, max=150),
        hysteresis_celsius=t.float("hysteresis_celsius", 5.0, min=0, max=50),
        hysteresis_percent=t.float("hysteresis_percent", 5.0, min=0, max=50),
        cgroup_root=t.path("cgroup_root", Path("/sys/fs/cgroup")),
        profiles=_parse_profiles(t),
    )
    if cfg.poll_interval <= 0:
        raise ConfigError(f"{t.key('poll_interval')}: must be above 0")
    t.done()
    return cfg


def parse_models(root: Table, state_dir: Path) -> ModelsConfig:
    models_t = root.table("models")
    default = models_t.str("default", None)
    cache_dir = models_t.path("cache_dir", state_dir / "models")
    catalog: dict[str, ModelSpec] = {}
    remote: dict[str, RemoteSpec] = {}
    for alias in list(models_t.keys()):
        if alias in ("default", "cache_dir"):
            continue
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", alias):
            raise ConfigError(f"models.{alias}: an alias is letters, digits, '.', '_' or '-'")
        table = models_t.table(alias)
        if is_remote(table):
            remote[alias] = parse_remote_spec(alias, table)
        else:
            catalog[alias] = _parse_spec(alias, table)
    models_t.done()
    if default is not None and default not in catalog and default not in remote:
        raise ConfigError(f"models.default: {default!r} is not a model alias")
    _check_fallbacks(catalog, remote)
    for spec in catalog.values():
        for v in spec.variants:
            if v not in catalog:
                raise ConfigError(f"models.{spec.alias}.variants: {v!r} is not a model alias")
    return ModelsConfig(
        catalog=catalog, default=default, cache_dir=cache_dir,
        budget=_parse_budget(root.table("budget")),
        power=_parse_power(root.table("power")),
        remote=remote,
    )


def _check_fallbacks(catalog: dict[str, ModelSpec], remote: dict[str, RemoteSpec]) -> None:
    """A fallback serves when the network cannot, so it must be a local model."""
    for spec in remote.values():
        if spec.fallback is None:
            continue
        if spec.fallback in remote:
            raise ConfigError(f"models.{spec.alias}.fallback: {spec.fallback!r} is a remote "
                              "alias; a fallback must be a local model")
        if spec.fallback not in catalog:
            raise ConfigError(f"models.{spec.alias}.fallback: {spec.fallback!r} is not a model "
                              f"alias (local: {', '.join(sorted(catalog)) or 'none'})")
        if catalog[spec.fallback].kind != "chat":
            raise ConfigError(f"models.{spec.alias}.fallback: {spec.fallback!r} is a "
                              f"{catalog[spec.fallback].kind} model; a fallback answers chat")
