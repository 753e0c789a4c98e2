"""The outbox on a real Store: same-transaction queueing, idempotency, the bound."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edged.errors import InsufficientStorage
from edged.store import Schema, Store
from edged.sync.outbox import EVENT_MAX_BYTES, ROW_OVERHEAD, SCHEMA, Notice, Outbox
from edged.sync.queue import CHECKPOINT, EVENT, METRICS, TICKET

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
    outbox = Outbox(store, 5 * (row + ROW_OVERHEAD + 10), registry, reserved_bytes=0)
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
    assert outbox.notices.qsize() == 2
    assert outbox.refusing
    await outbox.acknowledge(await outbox.batch(TICKET, 1, 1 << 30))
    assert not outbox.refusing  # the cloud took some: there is room again
    await outbox.enqueue(TICKET, "t-000002", b"y" * row)


async def test_events_and_rollups_cannot_take_the_reserved_room(store: Store) -> None:
    row = 1000
    size = row + ROW_OVERHEAD + 7  # keys of 7 characters
    outbox = Outbox(store, 8 * size, CollectorRegistry(), reserved_bytes=3 * size)
    for i in range(20):  # a flood: each new one pushes out the oldest of the shared room
        await outbox.enqueue(EVENT if i % 2 else METRICS, f"e-{i:05}", b"e" * row)
    usage = await outbox.refresh()
    assert usage.bytes[EVENT] + usage.bytes[METRICS] <= 5 * size
    rows = [*await outbox.batch(EVENT, 100, 1 << 30), *await outbox.batch(METRICS, 100, 1 << 30)]
    kept = sorted(r.key for r in rows)
    assert kept == [f"e-{i:05}" for i in range(15, 20)]  # the newest five, by age across both
    for i in range(3):  # the reserve is there for tickets and checkpoints
        await outbox.enqueue(TICKET if i else CHECKPOINT, f"t-{i:05}", b"t" * row)
    assert not outbox.refusing
    assert (await outbox.refresh()).total_bytes <= outbox.max_bytes


async def test_a_ticket_pushes_out_events_when_the_outbox_is_full(store: Store) -> None:
    row = 1000
    size = row + ROW_OVERHEAD + 7  # keys of 7 characters
    outbox = Outbox(store, 4 * size, CollectorRegistry(), reserved_bytes=size)
    for i in range(3):
        await outbox.enqueue(EVENT, f"e-{i:05}", b"e" * row)
    for i in range(3):
        await outbox.enqueue(TICKET, f"t-{i:05}", b"t" * row)
    assert [r.key for r in await outbox.batch(EVENT, 10, 1 << 30)] == ["e-00002"]
    assert len(await outbox.batch(TICKET, 10, 1 << 30)) == 3
    notices = [outbox.notices.get_nowait() for _ in range(outbox.notices.qsize())]
    assert notices == [Notice("dropped", EVENT, 1, size)] * 2


async def test_an_event_is_small(store: Store) -> None:
    registry = CollectorRegistry()
    outbox = Outbox(store, 1 << 20, registry)
    await outbox.enqueue(EVENT, "e-big", {"reason": "x" * EVENT_MAX_BYTES})
    assert await outbox.batch(EVENT, 10, 1 << 30) == []
    assert registry.get_sample_value("edged_outbox_dropped_total", {"kind": EVENT}) == 1
    assert not outbox.refusing
