"""Tickets for people: a row here and an outbox row for the cloud, in one transaction."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from edged.store import Store
from edged.sync.queue import TICKET, OutboxQueue

NOT_NOTIFIED = "I couldn't notify staff automatically — please ask at the front desk."


class Tickets:
    def __init__(self, store: Store, outbox: OutboxQueue) -> None:
        self._store = store
        self._outbox = outbox

    async def open(self, agent: str, topic: str, payload: Mapping[str, Any]) -> str:
        """Record a ticket and queue it for the cloud; both commit or neither does.

        The caller decides what ``payload`` may carry: for a PHI agent only an opaque
        reference, never what the patient said.
        """
        ticket_id = f"T-{uuid.uuid4().hex[:10].upper()}"
        body = {"id": ticket_id, "agent": agent, "topic": topic, "created": time.time(),
                **payload}
        async with self._store.transaction() as db:
            await db.execute(
                "INSERT INTO agent_tickets (id, agent, created, topic, body) "
                "VALUES (?, ?, ?, ?, ?)",
                (ticket_id, agent, body["created"], topic, json.dumps(body)))
            await self._outbox.enqueue_in(db, TICKET, ticket_id, body)
        return ticket_id
