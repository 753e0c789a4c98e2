"""The store's transactions survive cancellation at any await."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edged.store import Schema, Store

SCHEMA = Schema("t", ("CREATE TABLE facts (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",))


async def test_commit_and_rollback(tmp_path: Path) -> None:
    async with Store(tmp_path / "db", [SCHEMA]) as store:
        async with store.transaction() as db:
            await db.execute("INSERT INTO facts (v) VALUES ('kept')")
        try:
            async with store.transaction() as db:
                await db.execute("INSERT INTO facts (v) VALUES ('dropped')")
                raise ValueError("boom")
        except ValueError:
            pass
        rows = await store.fetchall("SELECT v FROM facts")
    assert [r["v"] for r in rows] == ["kept"]


async def test_cancelled_transactions_leave_the_connection_usable(tmp_path: Path) -> None:
    async with Store(tmp_path / "db", [SCHEMA]) as store:

        async def write(i: int) -> None:
            async with store.transaction() as db:
                await db.execute("INSERT INTO facts (v) VALUES (?)", (str(i),))

        # Cancel writers at every stage: waiting for the lock, inside BEGIN, inside the body
        # and inside COMMIT. Whatever was cancelled, the next transaction must work.
        for delay_steps in range(8):
            tasks = [asyncio.create_task(write(i)) for i in range(5)]
            for _ in range(delay_steps):
                await asyncio.sleep(0)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await write(1000 + delay_steps)
        rows = await store.fetchall("SELECT v FROM facts WHERE v >= '1000'")
    assert len(rows) == 8
