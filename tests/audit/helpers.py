"""Building real audit logs for tests: real files, real keys, real crypto."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from edged.audit.config import AuditConfig
from edged.audit.frames import RawFrame, iter_frames, list_segments
from edged.audit.keys import init_keys, load_keys
from edged.audit.log import AuditLog
from edged.sync.queue import OutboxQueue


def audit_config(**changes: Any) -> AuditConfig:
    base: dict[str, Any] = dict(enabled=True, segment_bytes=4096, checkpoint_every=10,
                                checkpoint_interval=3600.0, log_prompts=False, create_keys=False)
    base.update(changes)
    return AuditConfig(**base)


def open_log(state: Path, registry: CollectorRegistry | None = None,
             outbox: OutboxQueue | None = None, **changes: Any) -> AuditLog:
    """A log in ``state/audit`` with keys in ``state/keys`` (made on first use)."""
    keys_dir = state / "keys"
    if not (keys_dir / "audit.key").exists():
        init_keys(keys_dir)
    return AuditLog(audit_config(**changes), state / "audit", load_keys(keys_dir),
                    device_id="test-box", registry=registry, outbox=outbox)


async def append_events(log: AuditLog, n: int, kind: str = "test.event") -> list[int]:
    return list(await asyncio.gather(*(log.append(kind, "test", {"i": i}) for i in range(n))))


async def fill_log(state: Path, n: int, **changes: Any) -> None:
    """A closed log: daemon.start, n events (in order), daemon.stop."""
    async with open_log(state, **changes) as log:
        for i in range(n):
            await log.append("test.event", "test", {"i": i})


def write_log(state: Path, n: int, **changes: Any) -> None:
    asyncio.run(fill_log(state, n, **changes))


def frames(state: Path) -> list[tuple[Path, RawFrame]]:
    out = []
    for _, path in list_segments(state / "audit"):
        data = path.read_bytes()
        out += [(path, f) for f in iter_frames(data)]
    return out


def frame_of(state: Path, seq: int) -> tuple[Path, int, int]:
    """(segment, start offset, end offset) of the frame with this seq."""
    for path, f in frames(state):
        if f.seq == seq:
            return path, f.offset, f.end
    raise LookupError(seq)
