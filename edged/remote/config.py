"""Config of the ``[remote]`` section."""

from __future__ import annotations

from dataclasses import dataclass

from edged.tomlreader import Table


@dataclass(frozen=True)
class RemoteConfig:
    pull_interval: float
    health_window: float
    max_bundle_bytes: int


def parse_remote(t: Table) -> RemoteConfig:
    cfg = RemoteConfig(
        pull_interval=t.duration("pull_interval", 900.0),
        health_window=t.duration("health_window", 30.0),
        max_bundle_bytes=t.size("max_bundle_bytes", 256 * 1024),
    )
    t.done()
    return cfg
