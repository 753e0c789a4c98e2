"""The outbox: one SQLite table of rows waiting for the cloud.

Rows are queued inside the caller's transaction, so a ticket and the fact it records commit
together. The outbox is bounded by ``sync.max_bytes``, in two classes: tickets and
checkpoints may use all of it; events and metric rollups only what ``sync.reserved_bytes``
leaves, so no flood of events can take the room a ticket needs. When a new row does not
fit, the oldest events and rollups go first (and the alert says what went); tickets and
checkpoints are never dropped, a new one is refused with ``InsufficientStorage`` (507)
instead. An event is small (at most ``EVENT_MAX_BYTES``). A per-class usage table, updated
in the same transactions as the rows, keeps the bound check cheap at 100,000 rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
from prometheus_client import CollectorRegistry, Counter, Gauge

from edged.errors import InsufficientStorage
from edged.store import Schema, Store
from edged.sync.queue import CHECKPOINT, EVENT, METRICS, TICKET

log = logging.getLogger(__name__)

KINDS = (TICKET, CHECKPOINT, EVENT, METRICS)
# What may be dropped (oldest first) to stay in bound, and may not use the reserved room.
DROPPABLE = (EVENT, METRICS)
URGENT = frozenset({TICKET, EVENT})
# An event reports an outcome with a bounded excerpt of what caused it, never a payload.
EVENT_MAX_BYTES = 4096

SCHEMA = Schema("sync", (
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        key TEXT NOT NULL UNIQUE,
        is_json INTEGER NOT NULL,
        payload BLOB NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX outbox_kind_id ON outbox (kind, id);
    CREATE TABLE outbox_usage (
        kind TEXT PRIMARY KEY,
        rows INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    )
    """,
))

# Per-row bookkeeping (id, key, times, index entries) on top of the payload; counted so that
# many tiny rows cannot pass the bound unnoticed.
ROW_OVERHEAD = 64


@dataclass(frozen=True)
class Row:
    id: int
    kind: str
    key: str
    is_json: bool
    payload: bytes
    size: int
    created: float

    def value(self) -> Any:
        return json.loads(self.payload) if self.is_json else self.payload


@dataclass(frozen=True)
class Notice:
    """What the outbox-full alert reports: a refused row, or rows dropped to make room."""

    action: str  # refused | dropped
    kind: str
    rows: int
    bytes: int
    key: str | None = None  # the refused row's key


@dataclass
class Usage:
    """What the outbox holds, per class: rows, bytes, oldest row's creation time."""

    rows: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    oldest: dict[str, float] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


def encode(payload: Mapping[str, Any] | bytes) -> tuple[bool, bytes]:
    if isinstance(payload, bytes | bytearray | memoryview):
        return False, bytes(payload)
    return True, json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class OutboxMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Gauge("edged_outbox_rows", "Rows queued for the cloud, by class", ["kind"],
                          registry=registry)
        self.bytes = Gauge("edged_outbox_bytes", "Bytes queued for the cloud, by class", ["kind"],
                           registry=registry)
        self.oldest_age = Gauge("edged_outbox_oldest_age_seconds",
                                "Age of the oldest queued row, by class", ["kind"],
                                registry=registry)
        self.dropped = Counter("edged_outbox_dropped",
                               "Events and metric rollups dropped to stay in bound", ["kind"],
                               registry=registry)
        self.refused = Counter("edged_outbox_refused",
                               "Rows refused because the outbox was full", ["kind"],
                               registry=registry)


class Outbox:
    """Implements ``OutboxQueue``; also what the uploader reads and acknowledges."""

    def __init__(self, store: Store, max_bytes: int, registry: CollectorRegistry, *,
                 reserved_bytes: int | None = None) -> None:
        self._store = store
        self.max_bytes = max_bytes
        # room only tickets and checkpoints may use; a quarter of the bound unless set
        self.reserved_bytes = max_bytes // 4 if reserved_bytes is None else reserved_bytes
        self.metrics = OutboxMetrics(registry)
        self.pending = asyncio.Event()  # set when a row is queued: wakes the uploader
        # Set with ``pending`` for a ticket or event: worth cutting a backoff wait short for.
        # Rollups and checkpoints come by the clock and wait for the backoff instead.
        self.urgent = False
        self.usage = Usage()
        self.notices: asyncio.Queue[Notice] = asyncio.Queue(maxsize=1000)
        self.last_refused: float | None = None
        # True from a refusal until room is made (an ack) or a non-droppable row fits again.
        self.refusing = False

    # -- queueing (OutboxQueue)

    async def enqueue(self, kind: str, key: str, payload: Mapping[str, Any] | bytes) -> None:
        async with self._store.transaction() as db:
            await self.enqueue_in(db, kind, key, payload)

    async def enqueue_in(self, db: aiosqlite.Connection, kind: str, key: str,
                         payload: Mapping[str, Any] | bytes) -> None:
        if kind not in KINDS:
            raise ValueError(f"outbox kind {kind!r} is not one of {', '.join(KINDS)}")
        if not key:
            raise ValueError("an outbox row needs a non-empty idempotency key")
        is_json, body = encode(payload)
        size = len(body) + len(key) + ROW_OVERHEAD
        if kind == EVENT and len(body) > EVENT_MAX_BYTES:
            log.error("outbox: event %s is %d bytes (more than %d): not queued", key,
                      len(body), EVENT_MAX_BYTES)
            self._refuse(kind, key, size)
            return
        exists, used, shared = await _lookup(db, key)
        if exists:
            return
        excess = used + size - self.max_bytes
        if kind in DROPPABLE:
            excess = max(excess, shared + size - (self.max_bytes - self.reserved_bytes))
        if excess > 0 and not await self._make_room(db, excess):
            self._refuse(kind, key, size)
            return
        await db.execute(
            "INSERT INTO outbox (kind, key, is_json, payload, size, created) "
            "VALUES (?, ?, ?, ?, ?, ?)", (kind, key, int(is_json), body, size, time.time()))
        await _add_usage(db, kind, 1, size)
        if kind not in DROPPABLE:
            self.refusing = False
        self.urgent = self.urgent or kind in URGENT
        self.pending.set()

    async def _make_room(self, db: aiosqlite.Connection, excess: int) -> bool:
        """Free ``excess`` bytes by dropping the oldest events and rollups (by age across
        both); False, dropping nothing, when even all of them would not be enough."""
        if sum([await _bytes_of(db, kind) for kind in DROPPABLE]) < excess:
            return False
        candidates: list[tuple[int, str, int]] = []
        for kind in DROPPABLE:  # each class's oldest rows, through the (kind, id) index
            candidates += await _oldest(db, kind, excess)
        freed, dropped = 0, {kind: [0, 0] for kind in DROPPABLE}
        ids = []
        for row_id, kind, size in sorted(candidates):
            if freed >= excess:
                break
            ids.append(row_id)
            freed += size
            dropped[kind][0] += 1
            dropped[kind][1] += size
        await _delete_ids(db, ids)
        for kind, (rows, size) in dropped.items():
            if rows:
                await _add_usage(db, kind, -rows, -size)
                self.metrics.dropped.labels(kind).inc(rows)
                self._notice(Notice("dropped", kind, rows, size))
                log.warning("outbox full: dropped the %d oldest %s rows (%d bytes)", rows,
                            kind, size)
        return True

    def _notice(self, notice: Notice) -> None:
        if not self.notices.full():
            self.notices.put_nowait(notice)

    def _refuse(self, kind: str, key: str, size: int) -> None:
        self.metrics.refused.labels(kind).inc()
        if kind in DROPPABLE:
            self.metrics.dropped.labels(kind).inc()
            self._notice(Notice("dropped", kind, 1, size, key))
            log.warning("outbox full: dropped the new %s row %s", kind, key)
            return
        self.last_refused = time.time()
        self.refusing = True
        log.error("outbox full (%d bytes, sync.max_bytes): refused %s %s", self.max_bytes,
                  kind, key)
        self._notice(Notice("refused", kind, 1, size, key))
        raise InsufficientStorage(
            f"the outbox is full (sync.max_bytes = {self.max_bytes} bytes of tickets and "
            f"checkpoints waiting for the cloud); {kind} {key!r} was refused",
            kind=kind, key=key)

    # -- reading and acknowledging (the uploader)

    async def batch(self, kind: str, max_rows: int, max_bytes: int) -> list[Row]:
        """The oldest rows of a class, at most ``max_rows`` and about ``max_bytes`` (at
        least one row). Read under the write lock so no uncommitted row is ever sent."""
        rows: list[Row] = []
        total = 0
        async with self._store.transaction() as db, db.execute(
                "SELECT id, kind, key, is_json, payload, size, created FROM outbox "
                "WHERE kind = ? ORDER BY id LIMIT ?", (kind, max_rows)) as cur:
            async for r in cur:
                if rows and total + r[5] > max_bytes:
                    break
                rows.append(Row(r[0], r[1], r[2], bool(r[3]), bytes(r[4]), r[5], r[6]))
                total += r[5]
        return rows

    async def acknowledge(self, rows: Sequence[Row]) -> None:
        """Delete rows the cloud has acknowledged."""
        if not rows:
            return
        self.refusing = False
        async with self._store.transaction() as db:
            await _delete_ids(db, [r.id for r in rows])
            for kind in {r.kind for r in rows}:
                mine = [r for r in rows if r.kind == kind]
                await _add_usage(db, kind, -len(mine), -sum(r.size for r in mine))

    async def recount(self) -> None:
        """Rebuild the usage table from the rows (at start: after a crash or a salvage the
        rows are the truth)."""
        async with self._store.transaction() as db:
            await db.execute("DELETE FROM outbox_usage")
            await db.execute("INSERT INTO outbox_usage (kind, rows, bytes) "
                             "SELECT kind, count(*), total(size) FROM outbox GROUP BY kind")

    async def refresh(self) -> Usage:
        """Re-read the usage table and the oldest row per class; update the gauges."""
        usage = Usage()
        async with self._store.transaction() as db:
            async with db.execute("SELECT kind, rows, bytes FROM outbox_usage") as cur:
                async for kind, rows, size in cur:
                    usage.rows[kind], usage.bytes[kind] = rows, size
            for kind in KINDS:
                async with db.execute("SELECT created FROM outbox WHERE kind = ? "
                                      "ORDER BY id LIMIT 1", (kind,)) as cur:
                    first = await cur.fetchone()
                if first is not None:
                    usage.oldest[kind] = first[0]
        self.usage = usage
        self._set_gauges(usage)
        return usage

    def _set_gauges(self, usage: Usage) -> None:
        now = time.time()
        for kind in KINDS:
            self.metrics.rows.labels(kind).set(usage.rows.get(kind, 0))
            self.metrics.bytes.labels(kind).set(usage.bytes.get(kind, 0))
            oldest = usage.oldest.get(kind)
            self.metrics.oldest_age.labels(kind).set(0 if oldest is None else now - oldest)


async def _lookup(db: aiosqlite.Connection, key: str) -> tuple[bool, int, int]:
    """Whether the key is queued already, the bytes in use, and those of the droppable
    classes: one round trip to the database thread, since queueing sits on every ticket's
    path."""
    async with db.execute("SELECT EXISTS (SELECT 1 FROM outbox WHERE key = ?), "
                          "(SELECT total(bytes) FROM outbox_usage), "
                          "(SELECT total(bytes) FROM outbox_usage WHERE kind IN (?, ?))",
                          (key, *DROPPABLE)) as cur:
        row = await cur.fetchone()
    assert row is not None
    return bool(row[0]), int(row[1]), int(row[2])


async def _oldest(db: aiosqlite.Connection, kind: str, enough: int) -> list[tuple[int, str, int]]:
    """(id, kind, size) of a class's oldest rows, until they add up to ``enough`` bytes."""
    rows, total = [], 0
    async with db.execute("SELECT id, size FROM outbox WHERE kind = ? ORDER BY id",
                          (kind,)) as cur:
        async for row_id, size in cur:
            rows.append((row_id, kind, size))
            total += size
            if total >= enough:
                break
    return rows


async def _bytes_of(db: aiosqlite.Connection, kind: str) -> int:
    async with db.execute("SELECT bytes FROM outbox_usage WHERE kind = ?", (kind,)) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _add_usage(db: aiosqlite.Connection, kind: str, rows: int, size: int) -> None:
    await db.execute(
        "INSERT INTO outbox_usage (kind, rows, bytes) VALUES (?, ?, ?) "
        "ON CONFLICT(kind) DO UPDATE SET rows = rows + excluded.rows, "
        "bytes = bytes + excluded.bytes", (kind, rows, size))


async def _delete_ids(db: aiosqlite.Connection, ids: Sequence[int]) -> None:
    # Chunks stay under SQLite's bound-parameter limit.
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        await db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})",
                         chunk)
