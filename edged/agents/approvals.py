"""Staff approval of a tool call: the call waits until an admin or a member of the agent's
``approver_groups`` decides, or the request expires.

A request is a row before anyone is told about it (``agent_approvals``), so the list an
approver sees survives a restart; a request still pending when the daemon stops is expired
at the next start (its turn ended with the process). A PHI agent's arguments are sealed at
rest like its sessions. Each request and decision is in the audit log.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from edged.agents.sessions import Sealer
from edged.audit.sink import AuditSink
from edged.errors import Conflict, Forbidden, NotFound
from edged.store import Store

STATES = ("pending", "approved", "denied", "expired")


@dataclass(frozen=True)
class Request:
    id: str
    agent: str
    tool: str
    arguments: dict[str, Any]
    session: str
    uid: int
    created: float
    expires: float
    state: str
    decided_by: int | None = None

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "agent": self.agent, "tool": self.tool,
                "arguments": self.arguments, "session": self.session, "uid": self.uid,
                "created": self.created, "expires": self.expires, "state": self.state,
                "decided_by": self.decided_by}


class Approvals:
    def __init__(self, store: Store, sealer: Sealer, audit: AuditSink) -> None:
        self._store = store
        self._sealer = sealer
        self._audit = audit
        self._waiting: dict[str, asyncio.Future[str]] = {}

    async def expire_leftovers(self) -> None:
        """Requests pending when the daemon last stopped: nobody waits for them now."""
        async with self._store.transaction() as db:
            await db.execute("UPDATE agent_approvals SET state = 'expired', decided = ? "
                             "WHERE state = 'pending'", (time.time(),))

    async def ask(self, agent: str, tool: str, arguments: dict[str, Any], session: str,
                  uid: int, ttl: float, phi: bool) -> Request:
        now = time.time()
        req = Request(f"A-{secrets.token_hex(5).upper()}", agent, tool, arguments, session,
                      uid, now, now + ttl, "pending")
        raw = json.dumps(arguments).encode()
        blob = self._sealer.seal(raw, req.id.encode()) if phi else raw
        async with self._store.transaction() as db:
            await db.execute(
                "INSERT INTO agent_approvals (id, agent, tool, session, uid, created, expires, "
                "state, encrypted, arguments) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (req.id, agent, tool, session, uid, now, req.expires, int(phi), blob))
        self._waiting[req.id] = asyncio.get_running_loop().create_future()
        await self._audit.append("approval.requested", f"agent:{agent}", {
            "id": req.id, "tool": tool, "session": session, "uid": uid,
            **({} if phi else {"arguments": arguments})})
        return req

    async def wait(self, req: Request) -> str:
        """approved, denied or expired."""
        future = self._waiting[req.id]
        try:
            async with asyncio.timeout(max(0.0, req.expires - time.time())):
                return await asyncio.shield(future)
        except TimeoutError:
            if await self._settle(req.id, "expired", None):
                await self._audit.append("approval.expired", f"agent:{req.agent}",
                                         {"id": req.id, "tool": req.tool})
                return "expired"
            return future.result() if future.done() else "expired"
        except asyncio.CancelledError:  # the person left: nobody waits for a decision now
            await asyncio.shield(self._settle(req.id, "expired", None))
            raise
        finally:
            self._waiting.pop(req.id, None)

    async def decide(self, ident: str, approve: bool, uid: int, may: set[str] | None) -> Request:
        """``may``: the agents this approver may decide for (None: any, an admin)."""
        req = await self.get(ident)
        if may is not None and req.agent not in may:
            raise Forbidden(f"approvals: uid {uid} is not an approver of agent {req.agent!r} "
                            "(its approver_groups) nor an admin")
        state = "approved" if approve else "denied"
        if not await self._settle(ident, state, uid):
            current = await self.get(ident)
            raise Conflict(f"approval {ident} is already {current.state}",
                           code="already_decided")
        future = self._waiting.get(ident)
        if future is not None and not future.done():
            future.set_result(state)
        await self._audit.append("approval.decided", f"uid:{uid}", {
            "id": ident, "agent": req.agent, "tool": req.tool, "decision": state})
        return await self.get(ident)

    async def get(self, ident: str) -> Request:
        row = await self._store.fetchone("SELECT * FROM agent_approvals WHERE id = ?", (ident,))
        if row is None:
            raise NotFound(f"no approval request {ident!r}", code="approval_not_found")
        return self._request(row)

    async def list(self, state: str | None) -> list[Request]:
        if state is None:
            rows = await self._store.fetchall(
                "SELECT * FROM agent_approvals ORDER BY created DESC LIMIT 200")
        else:
            rows = await self._store.fetchall(
                "SELECT * FROM agent_approvals WHERE state = ? ORDER BY created DESC LIMIT 200",
                (state,))
        return [self._request(r) for r in rows]

    async def _settle(self, ident: str, state: str, uid: int | None) -> bool:
        """Move a pending request to ``state``; False if it was no longer pending."""
        async with self._store.transaction() as db:
            cur = await db.execute(
                "UPDATE agent_approvals SET state = ?, decided_by = ?, decided = ? "
                "WHERE id = ? AND state = 'pending'", (state, uid, time.time(), ident))
            return cur.rowcount == 1

    def _request(self, row: Any) -> Request:
        raw = bytes(row["arguments"])
        if row["encrypted"]:
            raw = self._sealer.open(raw, str(row["id"]).encode())
        return Request(row["id"], row["agent"], row["tool"], json.loads(raw), row["session"],
                       row["uid"], row["created"], row["expires"], row["state"],
                       row["decided_by"])
