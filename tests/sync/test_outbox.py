"""The outbox on a real Store: same-transaction queueing, idempotency, the bound."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edged.errors import InsufficientStorage
from edged.store import Schema, Store
from edged.sync.outbox import ROW_OVERHEAD, SCHEMA, Outbox
from edged.sync.queue import CHECKPOINT, METRICS, TICKET

FACTS = Schema("facts", ("CREATE TABLE fact (id INTEGER PRIMARY KEY, text TEXT NOT NULL)",))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "edged.db", [SCHEMA, FACTS]) as s:
        yield s


def outbox_for(store: Store, max_bytes: int = 1 << 20) -> Outbox:
    return Outbox(store, max_bytes, CollectorRegistry())


async def test_row_commits_with_the_fact_or_not_at_all(store: Store) -> None:
    outbox = outbox_for(store)
    async with store.transaction() as db:
        await db.execute("INSERT INTO fact (text) VALUES ('kept')")
        await outbox.enqueue_in(db, TICKET, "t-1", {"subject": "kept"})
    with pytest.raises(RuntimeError):
        async with store.transaction() as db:
            await db.execute("INSERT INTO fact (text) VALUES ('lost')")
            await outbox.enqueue_in(db, TICKET, "t-2", {"subject": "lost"})
            raise RuntimeError("the caller fails after queueing")
    rows = await outbox.batch(TICKET, 10, 1 << 20)
    assert [(r.key, r.value()) for r in rows] == [("t-1", {"subject": "kept"})]
    assert [r["text"] for r in await store.fetchall("SELECT text FROM fact")] == ["kept"]
    assert (await outbox.refresh()).rows == {TICKET: 1}


async def test_same_key_twice_keeps_one_row(store: Store) -> None:
    outbox = outbox_for(store)
    await outbox.enqueue(TICKET, "t-1", {"n": 1})
    await outbox.enqueue(TICKET, "t-1", {"n": 2})
    rows = await outbox.batch(TICKET, 10, 1 << 20)
    assert [r.value() for r in rows] == [{"n": 1}]
    assert (await outbox.refresh()).rows == {TICKET: 1}


async def test_batches_are_ordered_and_bounded_and_acks_delete(store: Store) -> None:
    outbox = outbox_for(store)
    for i in range(10):
        await outbox.enqueue(TICKET, f"t-{i}", {"i": i, "pad": "x" * 100})
    first = await outbox.batch(TICKET, 4, 1 << 20)
    assert [r.key for r in first] == ["t-0", "t-1", "t-2", "t-3"]
    by_bytes = await outbox.batch(TICKET, 100, first[0].size * 2)
    assert len(by_bytes) == 2
    await outbox.acknowledge(first)
    assert [r.key for r in await outbox.batch(TICKET, 2, 1 << 20)] == ["t-4", "t-5"]
    usage = await outbox.refresh()
    assert usage.rows == {TICKET: 6}
    assert usage.bytes[TICKET] == sum(r.size for r in await outbox.batch(TICKET, 100, 1 << 30))


async def test_full_outbox_drops_oldest_rollups_first(store: Store) -> None:
    row = 1000
    registry = CollectorRegistry()
    outbox = Outbox(store, 5 * (row + ROW_OVERHEAD + 10), registry)
    for i in range(4):
        await outbox.enqueue(METRICS, f"m-{i:03}", b"x" * row)
    await outbox.enqueue(TICKET, "t-000001", b"y" * row)
    await outbox.enqueue(TICKET, "t-000002", b"y" * row)
    metrics = [r.key for r in await outbox.batch(METRICS, 100, 1 << 30)]
    assert metrics == ["m-001", "m-002", "m-003"]
    assert registry.get_sample_value("edged_outbox_dropped_total", {"kind": METRICS}) == 1
    assert not outbox.refusing  # dropping rollups is the plan, not a fault


async def test_full_outbox_refuses_tickets_and_checkpoints(store: Store) -> None:
    row = 1000
    outbox = outbox_for(store, max_bytes=2 * (row + ROW_OVERHEAD + 10))
    await outbox.enqueue(TICKET, "t-000001", b"y" * row)
    await outbox.enqueue(CHECKPOINT, "c-000001", b"y" * row)
    with pytest.raises(InsufficientStorage) as refused:
        await outbox.enqueue(TICKET, "t-000002", b"y" * row)
    assert refused.value.status == 507
    with pytest.raises(InsufficientStorage):
        await outbox.enqueue(CHECKPOINT, "c-000002", b"y" * row)
    keys = [r.key for k in (TICKET, CHECKPOINT) for r in await outbox.batch(k, 10, 1 << 30)]
    assert keys == ["t-000001", "c-000001"]
    assert outbox.refusals.qsize() == 2
    assert outbox.refusing
    await outbox.acknowledge(await outbox.batch(TICKET, 1, 1 << 30))
    assert not outbox.refusing  # the cloud took some: there is room again
    await outbox.enqueue(TICKET, "t-000002", b"y" * row)
