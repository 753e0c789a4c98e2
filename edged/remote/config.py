"""Config of the ``[remote]`` section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edged.errors import ConfigError
from edged.tomlreader import Table


@dataclass(frozen=True)
class RemoteConfig:
    pull_interval: float
    health_window: float
    max_bundle_bytes: int
    # Folders a pushed config may point into; None: <state_dir>/models and <state_dir>/data.
    # Only the local config file may set it (a push cannot widen its own reach).
    allowed_paths: tuple[Path, ...] | None


def parse_remote(t: Table) -> RemoteConfig:
    paths = t.str_list("allowed_paths", None)
    cfg = RemoteConfig(
        pull_interval=t.duration("pull_interval", 900.0),
        health_window=t.duration("health_window", 30.0),
        max_bundle_bytes=t.size("max_bundle_bytes", 256 * 1024),
        allowed_paths=None if paths is None else tuple(_resolve(t, p) for p in paths),
    )
    t.done()
    if cfg.pull_interval < 10:
        raise ConfigError(f"{t.key('pull_interval')}: {cfg.pull_interval}s is below the "
                          "minimum of 10s")
    return cfg


def _resolve(t: Table, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else t.base_dir / p
