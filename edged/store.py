"""The one SQLite database (aiosqlite, WAL, per-component migrations).

Each component declares its schema as a ``Schema``: a name and an ordered tuple of
migration scripts. The store applies the ones not yet applied, in order, at open.
Writes go through ``transaction()`` so that a fact and the outbox row recording it commit
together, or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from edged import salvage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schema:
    component: str
    migrations: tuple[str, ...]


class Store:
    def __init__(self, path: Path, schemas: Iterable[Schema]) -> None:
        self.path = path
        self._schemas = tuple(schemas)
        self._db: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self.salvage: salvage.Salvage | None = None
        self.corrupt_copies: list[Path] = []

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def __aenter__(self) -> Store:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        problem = await asyncio.to_thread(salvage.check, self.path)
        if problem is not None:
            self.salvage = await asyncio.to_thread(salvage.move_aside, self.path, problem)
        await self._open()
        if self.salvage is not None:
            await asyncio.to_thread(salvage.copy_readable, self.salvage, self.path)
        self.corrupt_copies = await asyncio.to_thread(salvage.corrupt_copies, self.path)
        return self

    def health(self) -> dict[str, Any]:
        """Degraded while a corrupt copy sits next to the database (docs/operations.md)."""
        if not self.corrupt_copies:
            return {"degraded": False}
        body: dict[str, Any] = {
            "degraded": True, "corrupt_copies": [str(p) for p in self.corrupt_copies],
            "message": "the database was found corrupt and moved aside; readable rows were "
                       "copied into a new one. Inspect the copy, then move it out of the "
                       "state folder and restart to clear this."}
        if self.salvage is not None:
            body.update(problem=self.salvage.problem, copied=self.salvage.copied,
                        lost=self.salvage.lost)
        return body

    async def _open(self) -> None:
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._migrate()

    async def __aexit__(self, *exc: object) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _migrate(self) -> None:
        await self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        for schema in self._schemas:
            row = await self.fetchone(
                "SELECT version FROM schema_version WHERE component = ?", (schema.component,)
            )
            current = row["version"] if row else 0
            for version, script in enumerate(schema.migrations[current:], start=current + 1):
                log.info("migrating %s to schema version %d", schema.component, version)
                async with self.transaction() as db:
                    for statement in _statements(script):
                        await db.execute(statement)
                    await db.execute(
                        "INSERT INTO schema_version (component, version) VALUES (?, ?) "
                        "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                        (schema.component, version),
                    )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction (BEGIN IMMEDIATE); commits on success, rolls back on error."""
        async with self._write_lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                yield self.db
                await asyncio.shield(self._finish("COMMIT"))
            except BaseException:
                # A cancellation can land while BEGIN or COMMIT is still running on
                # aiosqlite's thread; the ROLLBACK queues behind it, so the connection never
                # stays inside a half-open transaction.
                await asyncio.shield(self._finish("ROLLBACK"))
                raise

    async def _finish(self, verb: str) -> None:
        """COMMIT or ROLLBACK, if a transaction is still open."""
        try:
            await self.db.execute(verb)
        except sqlite3.OperationalError as e:
            if "no transaction is active" not in str(e):
                raise

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self.db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        async with self.db.execute(sql, params) as cur:
            return await cur.fetchone()


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
