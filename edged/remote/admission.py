"""From a pushed TOML document to a whole, validated ``Config``, or a clear refusal.

A pushed document is a complete config, but the box's identity and layout come from the
local config file: the keys below may not appear in a push, and their local values are put
in before validation. Every file path the pushed config names must either be the one the
running config already uses for that key, or lie under ``remote.allowed_paths``; nothing
may point into the keys folder or the config history.
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

# Dataclass field paths -> the TOML key a person wrote.
_KEY_NAMES = (("models.catalog.", "models."), ("models.budget.", "budget."),
              ("models.power.", "power."), ("agents.agents.", "agents."))


def _identity(running: Config) -> dict[tuple[str, str], Any]:
    values: dict[tuple[str, str], Any] = {
        ("daemon", "state_dir"): str(running.daemon.state_dir),
        ("daemon", "socket"): str(running.daemon.socket),
        ("daemon", "keys_dir"): str(running.daemon.keys_dir),
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


def allowed_roots(cfg: Config) -> tuple[Path, ...]:
    state = cfg.daemon.state_dir
    roots = cfg.remote.allowed_paths
    return roots if roots is not None else (state / "models", state / "data")


def check_paths(new: Config, running: Config) -> None:
    before = dict(config_paths(running))
    roots = [_real(p) for p in allowed_roots(running)]
    never = [_real(running.daemon.keys_dir), _real(running.daemon.state_dir / "config")]
    for key, path in config_paths(new):
        if before.get(key) == path:
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
