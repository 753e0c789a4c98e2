"""Config of the ``[audit]`` section."""

from __future__ import annotations

from dataclasses import dataclass

from edged.errors import ConfigError
from edged.tomlreader import Table


@dataclass(frozen=True)
class AuditConfig:
    enabled: bool
    segment_bytes: int
    checkpoint_every: int
    checkpoint_interval: float
    log_prompts: bool
    create_keys: bool  # first start with no keys and no segments: make them


def parse_audit(t: Table) -> AuditConfig:
    cfg = AuditConfig(
        enabled=t.bool("enabled", True),
        segment_bytes=t.size("segment_bytes", 16 * 1024 * 1024),
        checkpoint_every=t.int("checkpoint_every", 1000, min=1),
        checkpoint_interval=t.duration("checkpoint_interval", 300.0),
        log_prompts=t.bool("log_prompts", False),
        create_keys=t.bool("create_keys", True),
    )
    t.done()
    if cfg.checkpoint_interval <= 0:
        raise ConfigError(f"{t.key('checkpoint_interval')}: must be longer than 0s")
    if cfg.segment_bytes < 4096:
        raise ConfigError(f"{t.key('segment_bytes')}: {cfg.segment_bytes} is below the "
                          "minimum of 4096 bytes")
    return cfg
