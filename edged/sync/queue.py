"""What the rest of edged needs from the outbox: queue a row for the cloud."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import aiosqlite

# Classes of rows. Tickets and checkpoints are never dropped; metric rollups may be, oldest
# first, when the outbox reaches sync.max_bytes.
TICKET = "ticket"
CHECKPOINT = "checkpoint"
METRICS = "metrics"
EVENT = "event"


class OutboxQueue(Protocol):
    async def enqueue_in(self, db: aiosqlite.Connection, kind: str, key: str,
                         payload: Mapping[str, Any] | bytes) -> None:
        """Queue a row inside the caller's open transaction (``Store.transaction()``), so the
        row and the fact it records commit together. Raises ``InsufficientStorage`` (507)
        for a ticket or checkpoint when the outbox is full. ``key`` is the idempotency key:
        queueing the same key twice keeps one row."""
        ...

    async def enqueue(self, kind: str, key: str, payload: Mapping[str, Any] | bytes) -> None:
        """Queue a row in a transaction of its own."""
        ...
