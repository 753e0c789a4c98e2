"""Conversation sessions in SQLite: owned by one uid, expiring, encrypted for PHI agents.

A PHI agent's session state is sealed with AES-256-GCM (key from the keys folder); the AAD
binds the ciphertext to its session id and agent, so a row copied onto another session does
not open. Another uid asking for a session gets the same 404 as for one that never existed.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edged.errors import NotFound
from edged.store import Store


class Sealer:
    """AES-256-GCM with a random 96-bit nonce per message: nonce || ciphertext."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plain: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plain, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], aad)


@dataclass
class Session:
    id: str
    agent: str
    uid: int
    state: dict[str, Any] = field(default_factory=dict)
    new: bool = False


class SessionStore:
    def __init__(self, store: Store, sealer: Sealer, ttl: float) -> None:
        self._store = store
        self._sealer = sealer
        self._ttl = ttl

    def create(self, agent: str, uid: int) -> Session:
        return Session(id=secrets.token_urlsafe(16), agent=agent, uid=uid, new=True)

    async def load(self, session_id: str, agent: str, uid: int) -> Session:
        row = await self._store.fetchone(
            "SELECT * FROM agent_sessions WHERE id = ? AND agent = ? AND uid = ? "
            "AND expires > ?", (session_id, agent, uid, time.time()))
        if row is None:
            raise NotFound(f"no session {session_id!r} for agent {agent!r} (it may have expired)",
                           code="unknown_session")
        raw: bytes = row["state"]
        if row["encrypted"]:
            raw = self._sealer.open(raw, _aad(session_id, agent))
        return Session(id=session_id, agent=agent, uid=uid, state=json.loads(raw))

    async def save(self, session: Session, encrypt: bool) -> None:
        raw = json.dumps(session.state).encode()
        if encrypt:
            raw = self._sealer.seal(raw, _aad(session.id, session.agent))
        now = time.time()
        async with self._store.transaction() as db:
            await db.execute(
                "INSERT INTO agent_sessions (id, agent, uid, created, expires, encrypted, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "expires = excluded.expires, encrypted = excluded.encrypted, "
                "state = excluded.state",
                (session.id, session.agent, session.uid, now, now + self._ttl, int(encrypt), raw))

    async def purge(self) -> int:
        """Delete expired sessions; how many went."""
        async with self._store.transaction() as db:
            cur = await db.execute("DELETE FROM agent_sessions WHERE expires <= ?", (time.time(),))
            return cur.rowcount


def _aad(session_id: str, agent: str) -> bytes:
    return f"edged-session:{agent}:{session_id}".encode()
