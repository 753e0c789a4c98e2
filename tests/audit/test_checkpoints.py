"""Checkpoints on a timer and through the real outbox (real Store, real SQLite)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edged.audit.keys import load_keys
from edged.audit.verify import verify
from edged.store import Store
from edged.sync.outbox import SCHEMA, Outbox
from edged.sync.queue import CHECKPOINT
from tests.audit.helpers import fill_log, open_log


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "edged.db", [SCHEMA]) as s:
        yield s


def local_checkpoints(state: Path) -> list[dict[str, object]]:
    path = state / "audit" / "checkpoints"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_the_timer_checkpoints_new_records(tmp_path: Path, store: Store) -> None:
    outbox = Outbox(store, 1 << 20, CollectorRegistry())
    async with open_log(tmp_path, outbox=outbox, checkpoint_interval=0.05) as log:
        await log.append("test.event", "test", {})
        outbox.pending.clear()
        timer = asyncio.create_task(log.run())
        try:
            await asyncio.wait_for(outbox.pending.wait(), 60)  # set by the timer's checkpoint
        finally:
            timer.cancel()
        assert [cp["seq"] for cp in local_checkpoints(tmp_path)] == [2]
    rows = await outbox.batch(CHECKPOINT, 10, 1 << 20)
    assert [r.value()["seq"] for r in rows] == [2, 3]  # the timer's, and the one at close
    assert [r.value() for r in rows] == local_checkpoints(tmp_path)


async def test_a_full_outbox_keeps_the_checkpoint_locally_and_says_so(
        tmp_path: Path, store: Store) -> None:
    outbox = Outbox(store, 64, CollectorRegistry())  # too small for any row
    async with open_log(tmp_path, outbox=outbox, checkpoint_every=3) as log:
        for i in range(3):
            await log.append("test.event", "test", {"i": i})
        health = log.health()
    assert health["degraded"] is True and "not queued" in health["error"]
    assert [cp["seq"] for cp in local_checkpoints(tmp_path)] == [3, 5]
    assert await outbox.batch(CHECKPOINT, 10, 1 << 20) == []


async def test_a_half_written_checkpoint_line_is_ignored_then_cut(tmp_path: Path) -> None:
    await fill_log(tmp_path, 12)
    path = tmp_path / "audit" / "checkpoints"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"device": "test-box", "head": "ab')
    keys = load_keys(tmp_path / "keys", need_device=False)
    report = verify(tmp_path / "audit", keys)
    assert report.ok and report.checkpoints == len(whole.splitlines())
    async with open_log(tmp_path):
        pass
    assert path.read_bytes().startswith(whole) and path.read_bytes().endswith(b"}\n")
    assert verify(tmp_path / "audit", keys).ok
