"""From a pushed TOML document to a whole, validated ``Config``, or a clear refusal.

A pushed document is a complete config, but the box's identity and layout come from the
local config file: the keys below may not appear in a push, and their local values are put
in before validation. Every file path the pushed config names must either be the one the
running config already uses for that key, or lie under ``remote.allowed_paths``; nothing
may point into the keys folder or the config history.

A push may not quietly take away what the box has (docs/config-bundles.md, "What a push
must keep"): every section of the running document must be in it, and dropping every agent,
every model, the default model or ``sync.endpoint`` needs ``allow_removal = true`` at the top
of the (signed) document.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edged.config import Config, parse_config
from edged.errors import ConfigError

# (section, key) pairs only the local config file may set.
LOCKED_KEYS = (
    ("daemon", "state_dir"),
    ("daemon", "socket"),
    ("daemon", "keys_dir"),
    ("daemon", "device_id"),
    ("remote", "allowed_paths"),
)

# A top-level key of a pushed document, not of the config: the operator means to remove.
REMOVAL_FLAG = "allow_removal"

# Dataclass field paths -> the TOML key a person wrote.
_KEY_NAMES = (("models.catalog.", "models."), ("models.budget.", "budget."),
              ("models.power.", "power."), ("agents.agents.", "agents."))


def _identity(running: Config) -> dict[tuple[str, str], Any]:
    # Absolute: the pushed document's relative paths resolve against <state_dir>/config, and
    # a relative --state-dir given on the command line must not be re-resolved there.
    values: dict[tuple[str, str], Any] = {
        ("daemon", "state_dir"): str(running.daemon.state_dir.absolute()),
        ("daemon", "socket"): str(running.daemon.socket.absolute()),
        ("daemon", "keys_dir"): str(running.daemon.keys_dir.absolute()),
        ("daemon", "device_id"): running.daemon.device_id,
    }
    if running.remote.allowed_paths is not None:
        values[("remote", "allowed_paths")] = [str(p) for p in running.remote.allowed_paths]
    return values


def build_config(text: str, running: Config, source: Path, *, pushed: bool = True) -> Config:
    """Parse and validate a document as it would run on this box: a pushed one, or the
    local file again (``pushed=False``: its identity keys are allowed, and replaced by the
    running values all the same)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"bundle.config: not valid TOML: {e}") from None
    if pushed:
        refuse_locked_keys(data)
        removal_allowed(data)
    for (section, key), value in _identity(running).items():
        table = data.setdefault(section, {})
        if isinstance(table, dict):  # not a table: parse_config names the error
            table[key] = value
    return parse_config(data, source=source)


def refuse_locked_keys(data: dict[str, Any]) -> None:
    for section, key in LOCKED_KEYS:
        table = data.get(section)
        if isinstance(table, dict) and key in table:
            raise ConfigError(f"{section}.{key}: only the local config file may set this; "
                              "a pushed config may not change it", code="locked_key")


def removal_allowed(data: dict[str, Any]) -> bool:
    """Take the removal flag out of a parsed document (it is not a config key)."""
    flag = data.pop(REMOVAL_FLAG, False)
    if not isinstance(flag, bool):
        raise ConfigError(f"{REMOVAL_FLAG}: {flag!r} is not true or false")
    return flag


def sections_of(text: str) -> set[str]:
    """The top-level tables a document has; [daemon] only when it sets a key a push may
    set (a push cannot repeat the locked ones)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return set()
    locked = {key for section, key in LOCKED_KEYS if section == "daemon"}
    found = {k for k, v in data.items() if isinstance(v, dict)}
    daemon = data.get("daemon")
    if isinstance(daemon, dict) and not set(daemon) - locked:
        found.discard("daemon")
    return found


def check_keeps(text: str, new: Config, running: Config, running_text: str | None) -> None:
    """Refuse a push that drops what the box has, unless the document says it means to."""
    data = tomllib.loads(text)  # build_config has parsed it already
    if running_text is not None:
        missing = sorted(sections_of(running_text) - set(data))
        if missing:
            raise ConfigError(
                f"{', '.join(f'[{m}]' for m in missing)}: missing from the pushed config; a "
                "push is a complete config and this box's has these sections (write them, "
                "empty if need be)", code="incomplete_config")
    if removal_allowed(data):
        return
    lost = []
    if running.agents.agents and not new.agents.agents:
        lost.append(f"every agent ({', '.join(sorted(running.agents.agents))})")
    if running.models.catalog and not new.models.catalog:
        lost.append("every model")
    elif running.models.default is not None and new.models.default is None:
        lost.append(f"the default model ({running.models.default})")
    if running.sync.endpoint is not None and new.sync.endpoint is None:
        lost.append("sync.endpoint (the box could no longer pull a fix)")
    if lost:
        raise ConfigError(f"the pushed config removes {'; '.join(lost)}; set "
                          f"{REMOVAL_FLAG} = true at the top of the document to mean it",
                          code="incomplete_config")


def check_signable(data: dict[str, Any], where: Path) -> None:
    """``edged config sign``, without ``allow_removal``: the box-independent part of
    check_keeps."""
    missing = [s for s in ("models", "agents") if not isinstance(data.get(s), dict)]
    if missing:
        raise ConfigError(
            f"{where}: has no {' and no '.join(f'[{m}]' for m in missing)} section; a "
            "pushed config replaces the whole config, so a box would lose every one it has. "
            f"Write the sections, or set {REMOVAL_FLAG} = true at the top to mean it",
            code="incomplete_config")


def allowed_roots(cfg: Config) -> tuple[Path, ...]:
    state = cfg.daemon.state_dir
    roots = cfg.remote.allowed_paths
    return roots if roots is not None else (state / "models", state / "data")


def check_paths(new: Config, running: Config, local: Config | None = None) -> None:
    """``local``: the box's local file, so the fleet can put back what it had after a
    push that dropped those keys."""
    before = dict(config_paths(running))
    base = dict(config_paths(local)) if local is not None else {}
    roots = [_real(p) for p in allowed_roots(running)]
    never = [_real(running.daemon.keys_dir), _real(running.daemon.state_dir / "config")]
    for key, path in config_paths(new):
        if path in (before.get(key), base.get(key)):
            continue
        real = _real(path)
        if any(_inside(real, n) for n in never) or not any(_inside(real, r) for r in roots):
            raise ConfigError(
                f"{key}: {str(path)!r} is outside the folders a pushed config may use "
                f"({', '.join(str(r) for r in roots)})", code="path_not_allowed")


def config_paths(cfg: Config) -> Iterator[tuple[str, Path]]:
    """Every path in a config as (toml key, path), except the locked identity ones."""
    for f in dataclasses.fields(cfg):
        if f.name not in ("source", "daemon"):
            for key, path in _walk(getattr(cfg, f.name), f.name):
                if key != "remote.allowed_paths" and not key.startswith("remote.allowed_paths["):
                    yield _toml_key(key), path


def _walk(obj: object, key: str) -> Iterator[tuple[str, Path]]:
    if isinstance(obj, Path):
        yield key, obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _walk(getattr(obj, f.name), f"{key}.{f.name}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{key}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{key}[{i}]")


def _toml_key(key: str) -> str:
    for prefix, name in _KEY_NAMES:
        if key.startswith(prefix):
            return name + key[len(prefix):]
    return key


def _real(path: Path) -> Path:
    # realpath: '..' and symlinks must not lead out of an allowed folder.
    return Path(os.path.realpath(path))


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)
