"""Config of the ``[sync]`` section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edged.errors import ConfigError
from edged.tomlreader import Table


@dataclass(frozen=True)
class SyncConfig:
    endpoint: str | None  # unset: queue offline, never send
    max_bytes: int
    reserved_bytes: int  # of max_bytes, for tickets and checkpoints only
    batch_rows: int
    batch_bytes: int
    backoff_base: float
    backoff_cap: float
    connect_timeout: float
    request_timeout: float
    ca_file: Path | None
    token_file: Path | None
    rollup_interval: float


def parse_sync(t: Table) -> SyncConfig:
    endpoint = t.str("endpoint", None) or None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{t.key('endpoint')}: {endpoint!r} is not an http(s) URL")
    max_bytes = t.size("max_bytes", 64 * 1024 * 1024)
    reserved = t.size("reserved_bytes", None)
    reserved = max_bytes // 4 if reserved is None else reserved
    if reserved >= max_bytes:
        raise ConfigError(f"{t.key('reserved_bytes')}: {reserved} bytes leaves no room of "
                          f"sync.max_bytes ({max_bytes}) for events and metric rollups")
    cfg = SyncConfig(
        endpoint=endpoint.rstrip("/") if endpoint else None,
        max_bytes=max_bytes,
        reserved_bytes=reserved,
        batch_rows=t.int("batch_rows", 500, min=1, max=100_000),
        batch_bytes=t.size("batch_bytes", 1024 * 1024),
        backoff_base=t.duration("backoff_base", 1.0),
        backoff_cap=t.duration("backoff_cap", 300.0),
        connect_timeout=t.duration("connect_timeout", 10.0),
        request_timeout=t.duration("request_timeout", 60.0),
        ca_file=t.path("ca_file", None),
        token_file=t.path("token_file", None),
        rollup_interval=t.duration("rollup_interval", 60.0),
    )
    t.done()
    return cfg
