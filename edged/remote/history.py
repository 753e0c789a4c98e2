"""Every outcome of a config push: kept in SQLite, audited, and reported to the cloud.

The history row and the outbox row commit in one transaction, so the cloud hears of an
outcome exactly when the box remembers it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from edged.audit.sink import AuditSink
from edged.errors import EdgedError, InsufficientStorage
from edged.store import Schema, Store
from edged.sync.limit import CauseLimit, excerpt
from edged.sync.queue import EVENT, OutboxQueue

log = logging.getLogger(__name__)

SCHEMA = Schema("remote", (
    """
    CREATE TABLE remote_history (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        version INTEGER,
        outcome TEXT NOT NULL,
        source TEXT NOT NULL,
        actor TEXT NOT NULL,
        key_id TEXT,
        code TEXT,
        reason TEXT
    )
    """,
))


@dataclass(frozen=True)
class Outcome:
    outcome: str  # rejected | applied | confirmed | rolled_back
    version: int | None
    source: str  # api | pull | startup
    actor: str
    key_id: str | None = None
    reason: str | None = None
    code: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class History:
    def __init__(self, store: Store, device_id: str, *, audit: AuditSink | None = None,
                 outbox: OutboxQueue | None = None) -> None:
        self._store = store
        self._device_id = device_id
        self._audit = audit
        self._outbox = outbox
        self._limit = CauseLimit()

    async def record(self, o: Outcome) -> None:
        # What a refusal quotes comes from the bundle: only an excerpt is kept or sent.
        o = replace(o, key_id=excerpt(o.key_id, 64), reason=excerpt(o.reason),
                    code=excerpt(o.code, 64))
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {"type": "config." + o.outcome, "device_id": self._device_id, "at": at,
                 "version": o.version, "source": o.source, "actor": o.actor,
                 "key_id": o.key_id, "reason": o.reason, "code": o.code, **o.detail}
        # Only refusals can come in a flood (anyone may send a forged bundle).
        held = self._limit.admit(f"{o.code}") if o.outcome == "rejected" else 0
        async with self._store.transaction() as db:
            cur = await db.execute(
                "INSERT INTO remote_history (at, version, outcome, source, actor, key_id, "
                "code, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (at, o.version, o.outcome, o.source, o.actor, o.key_id, o.code, o.reason))
            if self._outbox is not None and held is None:
                log.debug("config %s (%s) not reported to the cloud: over its rate",
                          o.outcome, o.code)
            elif self._outbox is not None:
                key = f"config:{self._device_id}:{cur.lastrowid}:{o.outcome}:{o.version}"
                try:
                    await self._outbox.enqueue_in(
                        db, EVENT, key, {**event, "suppressed_before": held} if held else event)
                except InsufficientStorage as e:
                    # A full outbox must not block (or fail) the config change itself;
                    # the history row still records it, and sync raises its own alert.
                    log.warning("config %s not reported to the cloud: %s", o.outcome, e.message)
        if self._audit is not None:
            try:
                await self._audit.append("config." + o.outcome, o.actor, event)
            except (EdgedError, OSError) as e:
                log.error("config %s not audited: %s", o.outcome, e)
        log.info("config %s: v%s from %s%s", o.outcome, o.version, o.source,
                 f": {o.reason}" if o.reason else "")

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        rows = await self._store.fetchall(
            "SELECT at, version, outcome, source, actor, key_id, code, reason "
            "FROM remote_history ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(row) for row in rows]
