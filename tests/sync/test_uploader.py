"""The uploader against a misbehaving local cloud: the real Outbox, Store, Cloud and
Uploader in-process; only the cloud is a stand-in."""

from __future__ import annotations

import asyncio
import gzip
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from edged.store import Store
from edged.sync.cloud import Cloud
from edged.sync.config import SyncConfig, parse_sync
from edged.sync.outbox import SCHEMA, Outbox
from edged.sync.queue import CHECKPOINT, TICKET
from edged.sync.uploader import Uploader, backoff
from edged.tomlreader import Table
from tests.sync.fakecloud import FakeCloud


@dataclass
class Rig:
    store: Store
    outbox: Outbox
    uploader: Uploader
    cfg: SyncConfig
    registry: CollectorRegistry

    async def tickets(self, n: int, prefix: str = "t") -> list[str]:
        keys = [f"{prefix}-{i:05}" for i in range(n)]
        async with self.store.transaction() as db:
            for key in keys:
                await self.outbox.enqueue_in(db, TICKET, key, {"subject": key})
        return keys

    async def queued(self) -> int:
        return sum((await self.outbox.refresh()).rows.values())


def sync_config(**values: Any) -> SyncConfig:
    return parse_sync(Table(values, "sync"))


@pytest.fixture
async def cloud() -> AsyncIterator[FakeCloud]:
    c = FakeCloud()
    await c.start()
    yield c
    await c.stop()


@asynccontextmanager
async def rig(tmp_path: Path, endpoint: str, rng: random.Random | None = None,
              **values: Any) -> AsyncIterator[Rig]:
    settings = {"endpoint": endpoint, "batch_rows": 10, "backoff_base": "50ms",
                "backoff_cap": "500ms", "request_timeout": "5s", **values}
    cfg = sync_config(**settings)
    registry = CollectorRegistry()
    token = cfg.token_file or tmp_path / "no-token"
    async with Store(tmp_path / "edged.db", [SCHEMA]) as store, Cloud(
            endpoint, device_id="box-1", token_file=token, ca_file=cfg.ca_file,
            connect_timeout=cfg.connect_timeout, request_timeout=cfg.request_timeout) as c:
        outbox = Outbox(store, cfg.max_bytes, registry)
        uploader = Uploader(cfg, outbox, c, device_id="box-1", registry=registry, audit=None,
                            rng=rng)
        yield Rig(store, outbox, uploader, cfg, registry)


async def test_cloud_down_at_start_then_everything_arrives_once(
        tmp_path: Path, cloud: FakeCloud) -> None:
    await cloud.down()
    async with rig(tmp_path, cloud.url) as r:
        keys = await r.tickets(25)
        failed = await r.uploader.drain()
        assert failed.sent == {} and failed.error and "ClientConnector" in failed.error
        assert await r.queued() == 25
        await cloud.up()
        done = await r.uploader.drain()
        assert done.error is None and done.sent == {TICKET: 25}
        assert cloud.order == keys and cloud.duplicates() == {}
        assert await r.queued() == 0


async def test_500_keeps_the_rows(tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.mode = "500"
    async with rig(tmp_path, cloud.url) as r:
        await r.tickets(3)
        result = await r.uploader.drain()
        assert result.error and "HTTP 500" in result.error
        assert await r.queued() == 3 and cloud.stored == {}


async def test_stall_longer_than_the_timeout_fails_and_keeps_the_rows(
        tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.script = ["stall"]
    async with rig(tmp_path, cloud.url, request_timeout="300ms") as r:
        keys = await r.tickets(3)
        result = await r.uploader.drain()
        assert result.error and "timed out" in result.error
        assert await r.queued() == 3
        await cloud.release()
        assert (await r.uploader.drain()).sent == {TICKET: 3}
        assert cloud.order == keys


async def test_connection_reset_mid_body(tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.script = ["reset"]
    async with rig(tmp_path, cloud.url) as r:
        keys = await r.tickets(5)
        result = await r.uploader.drain()
        assert result.error is not None and cloud.stored == {}
        assert (await r.uploader.drain()).sent == {TICKET: 5}
        assert cloud.order == keys and cloud.duplicates() == {}


async def test_lost_ack_is_resent_with_the_same_keys_and_deduped(
        tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.script = ["lose_ack"]
    async with rig(tmp_path, cloud.url) as r:
        keys = await r.tickets(4)
        assert (await r.uploader.drain()).error is not None
        assert sorted(cloud.stored) == keys  # stored, but edged never heard so
        assert await r.queued() == 4
        assert (await r.uploader.drain()).sent == {TICKET: 4}
        assert cloud.duplicates() == dict.fromkeys(keys, 2)
        assert cloud.order == keys and await r.queued() == 0


async def test_flapping_cloud_gets_every_row_once_after_dedupe_in_order(
        tmp_path: Path, cloud: FakeCloud) -> None:
    rng = random.Random(6)
    cloud.script = [rng.choice(["ok", "500", "reset", "lose_ack"]) for _ in range(60)]
    async with rig(tmp_path, cloud.url, batch_rows=7) as r:
        tickets = await r.tickets(100)
        checkpoints = [f"c-{i}" for i in range(20)]
        for key in checkpoints:
            await r.outbox.enqueue(CHECKPOINT, key, b"\x00signed")
        for _ in range(200):
            if (await r.uploader.drain()).error is None:
                break
        assert await r.queued() == 0
        assert set(cloud.stored) == {*tickets, *checkpoints}
        assert [k for k in cloud.order if k.startswith("t-")] == tickets
        assert [k for k in cloud.order if k.startswith("c-")] == checkpoints
        assert {"500", "reset", "lose_ack"} <= {mode for _, mode in cloud.requests}
        assert cloud.stored["c-0"]["payload_b64"] == "AHNpZ25lZA=="


async def test_offline_ticket_arrives_on_the_first_attempt_after_connectivity_returns(
        tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.mode = "500"
    async with rig(tmp_path, cloud.url, backoff_cap="1s") as r:
        task = asyncio.create_task(r.uploader.run())
        try:
            await r.tickets(1, prefix="offline")
            assert await cloud.await_for(lambda c: len(c.requests) >= 3)
            cloud.mode = "ok"
            before, back = len(cloud.requests), time.time()
            scheduled = r.uploader.state.next_attempt
            assert scheduled is not None and scheduled <= back + r.cfg.backoff_cap
            assert await cloud.await_for(lambda c: "offline-00000" in c.stored)
            # One backoff period: the very next attempt carried it.
            assert [m for _, m in cloud.requests[before:]][:1] == ["ok"]
            assert len(cloud.requests) == before + 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_new_row_wakes_the_waiting_uploader(tmp_path: Path, cloud: FakeCloud) -> None:
    async with rig(tmp_path, cloud.url, backoff_cap="5m") as r:
        task = asyncio.create_task(r.uploader.run())
        try:
            keys = await r.tickets(2, prefix="first")
            assert await cloud.await_for(lambda c: set(keys) <= set(c.stored))
            more = await r.tickets(2, prefix="second")
            assert await cloud.await_for(lambda c: set(more) <= set(c.stored))
            assert r.uploader.state.next_attempt is None  # idle: waits on the event only
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_retry_after_is_honoured_up_to_the_cap(tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.mode, cloud.retry_after = "503", "30"
    async with rig(tmp_path, cloud.url, backoff_base="1ms", backoff_cap="10s") as r:
        await r.tickets(1)
        assert "HTTP 503" in (await r.uploader.sync_now())["error"]
        assert r.uploader.plan_next_attempt() == 10.0  # asked 30 s; our cap is 10 s
        cloud.retry_after = "2"
        await r.uploader.sync_now()
        assert r.uploader.plan_next_attempt() == 2.0  # jitter alone would be <= 2 ms


async def test_in_a_backoff_only_tickets_and_events_cut_the_wait_short(
        tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.mode = "500"
    # Random(0) draws 0.84 first: the wait after the first failure is 0.84 h.
    async with rig(tmp_path, cloud.url, rng=random.Random(0), backoff_base="1h",
                   backoff_cap="1h") as r:
        task = asyncio.create_task(r.uploader.run())
        try:
            await r.outbox.enqueue(CHECKPOINT, "c-1", {"seq": 1})
            assert await cloud.await_for(lambda c: len(c.requests) == 1)
            await r.outbox.enqueue(CHECKPOINT, "c-2", {"seq": 2})
            # A checkpoint (like a rollup) waits for the backoff: no second request comes.
            assert not await cloud.await_for(lambda c: len(c.requests) > 1, within=0.5)
            await r.tickets(1)
            assert await cloud.await_for(lambda c: len(c.requests) == 2)
            assert cloud.requests[1][0] == "/v1/tickets"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_backoff_is_full_jitter_under_the_cap() -> None:
    rng = random.Random(1)
    for failures in range(1, 40):
        ceiling = min(300.0, 1.0 * 2 ** (failures - 1))
        draws = [backoff(failures, 1.0, 300.0, rng) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling / 2  # spread over the range, not pinned at the ceiling


async def test_token_and_gzip(tmp_path: Path) -> None:
    cloud = FakeCloud(token="s3cret")
    await cloud.start()
    token = tmp_path / "device-token"
    try:
        async with rig(tmp_path, cloud.url, token_file=str(token)) as r:
            await r.tickets(1)
            refused = await r.uploader.drain()
            assert refused.error and "HTTP 401" in refused.error
            token.write_text("s3cret\n")
            assert (await r.uploader.drain()).sent == {TICKET: 1}
            assert cloud.headers[-1]["Content-Encoding"] == "gzip"
            assert cloud.headers[-1]["X-Edged-Device"] == "box-1"
    finally:
        await cloud.stop()


def test_batch_body_is_gzip_json() -> None:
    from edged.sync.contract import encode_batch
    from edged.sync.outbox import Row
    row = Row(1, TICKET, "k", True, b'{"a":1}', 10, 5.0)
    req = encode_batch(TICKET, [row], "box")
    assert req.path == "/v1/tickets"
    assert gzip.decompress(req.body) == (
        b'{"device_id":"box","tickets":[{"key":"k","created":5.0,"payload":{"a":1}}]}')
