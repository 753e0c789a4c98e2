"""One catalog model's state as the manager's parts see it, and their audit helper."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from edged.audit.sink import AuditSink
from edged.models.config import ModelSpec
from edged.models.worker import Worker

log = logging.getLogger(__name__)


@dataclass(eq=False)  # compared and hashed by identity: a reload may replace it
class Resident:
    """One catalog entry and, while it is loaded, its worker."""

    spec: ModelSpec
    state: str = "unloaded"  # unloaded | loading | loaded | unloading
    worker: Worker | None = None
    transition: asyncio.Future[None] | None = None
    pinned: bool = False
    active: int = 0  # requests waiting for or running on this model
    last_used: float = 0.0
    loaded_at: float = 0.0
    load_seconds: float = 0.0
    estimated: int = 0
    measured: int | None = None
    threads: int = 0
    parallel: int = 1  # sequences it decodes together
    avg_seconds: float = 1.0  # moving average of a request's run time, for Retry-After


async def audit_event(audit: AuditSink | None, kind: str, data: dict[str, Any]) -> None:
    """Append a model event; a failing audit log raises its own alarm, the event stands."""
    if audit is None:
        return
    try:
        await audit.append(kind, "daemon", data)
    except Exception:
        log.exception("could not audit %s", kind)
