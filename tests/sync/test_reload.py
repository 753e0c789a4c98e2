"""A signed push reloads ``[sync]`` in place: rows queued offline reach a newly pushed
endpoint without a restart, exactly once; a push the uploader cannot use (an unreadable
``ca_file``) is refused and rolled back; and moving to a new endpoint while the old cloud
holds a batch without answering loses no row.

Tickets are queued into the daemon's own database before it starts (as in
test_daemon_sync.py); audit checkpoints are queued by the daemon itself as requests come.
An in-process test covers what the daemon cannot show cheaply: a reload before ``run()``
starts, a raised ``max_bytes`` lifting a refusal, and the swap while an upload stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from edged.client import ApiError
from edged.config import Config, parse_config
from edged.errors import InsufficientStorage
from edged.store import Store
from edged.sync.outbox import SCHEMA, Outbox, Usage
from edged.sync.queue import TICKET
from edged.sync.service import SyncService
from tests.edgedtest import RunningDaemon, base_config, deep_merge
from tests.remote.fleet import bundle, pushed_doc, trust
from tests.sync.fakecloud import FakeCloud, threaded_cloud
from tests.sync.test_daemon_sync import queue_tickets, sync_section

# Short health window: ``?wait=true`` returns once the push is confirmed.
BASE = {"remote": {"health_window": "0.3s"}, "audit": {"checkpoint_every": 2}}


def _push(d: RunningDaemon, key: Ed25519PrivateKey, state: Path, extra: dict[str, Any],
          version: int) -> dict[str, Any]:
    raw = bundle(key, pushed_doc(state, deep_merge(BASE, extra)), version)
    result: dict[str, Any] = d.client.post("/admin/config?wait=true", json.loads(raw))
    return result


def _checkpoints(stored: dict[str, dict[str, Any]]) -> int:
    return sum(v["route"] == "/v1/audit/checkpoints" for v in stored.values())


def test_a_push_turns_sync_on_without_a_restart(
        edged: Callable[..., RunningDaemon], state_dir: Path) -> None:
    keys = [f"t-{i:03}" for i in range(25)]
    queue_tickets(state_dir, keys)
    key = Ed25519PrivateKey.generate()
    trust(state_dir / "keys", key)
    d = edged(BASE)
    for _ in range(6):  # audited requests: checkpoints queue while there is no endpoint
        d.client.get("/health")
    sync = d.client.get("/health")["sync"]
    assert sync["endpoint"] is None and sync["queued"]["ticket"] == 25
    assert sync["queued"]["checkpoint"] >= 1
    pid = d.proc.pid

    with threaded_cloud() as (cloud, _call):
        # Refused: the CA file is not PEM. Nothing changes and nothing is sent.
        bad_ca = state_dir / "data" / "ca.pem"
        bad_ca.parent.mkdir(parents=True, exist_ok=True)
        bad_ca.write_text("not a certificate\n")
        with pytest.raises(ApiError) as err:
            _push(d, key, state_dir, sync_section(cloud.url, ca_file=str(bad_ca)), 1)
        assert err.value.code == "rolled_back" and "sync.ca_file" in err.value.message
        sync = d.client.get("/health")["sync"]
        assert sync["endpoint"] is None and sync["queued"]["ticket"] == 25

        result = _push(d, key, state_dir, sync_section(cloud.url, batch_rows=7), 2)
        assert result["changed"] == ["sync"] and result["restart_required"] == []
        assert result["state"] == "confirmed"
        assert cloud.wait_for(lambda c: set(keys) <= set(c.stored) and _checkpoints(c.stored))
        assert [k for k in cloud.order if k in keys] == keys  # oldest first
        assert cloud.duplicates() == {}
        # batch_rows from the push: 25 tickets take 4 requests, not 1.
        assert sum(path == "/v1/tickets" for path, _ in cloud.requests) == 4
        health = d.client.get("/health")
        assert health["sync"]["endpoint"] == cloud.url
        assert health["sync"]["queued"]["ticket"] == 0
        assert health["remote"]["restart_required"] == []
        assert d.proc.poll() is None and d.proc.pid == pid
        assert d.log().count("edged ready on") == 1


def test_a_new_endpoint_while_the_old_cloud_stalls_loses_no_row(
        edged: Callable[..., RunningDaemon], state_dir: Path) -> None:
    keys = [f"k-{i:03}" for i in range(30)]
    queue_tickets(state_dir, keys)
    key = Ed25519PrivateKey.generate()
    trust(state_dir / "keys", key)
    with threaded_cloud() as (old, old_call), threaded_cloud() as (new, _call):
        # The old cloud stores the first batch and never answers: no ack, so those rows
        # must stay queued. A long request timeout: the push must not wait for it.
        old.mode = "store_then_stall"
        d = edged(deep_merge(BASE, sync_section(old.url, batch_rows=10, request_timeout="10m")))
        assert old.wait_for(lambda c: len(c.stored) == 10)
        assert d.client.get("/health")["sync"]["queued"]["ticket"] == 30

        result = _push(d, key, state_dir, sync_section(new.url, batch_rows=10), 1)
        assert result["changed"] == ["sync"] and result["state"] == "confirmed"
        assert new.wait_for(lambda c: set(keys) <= set(c.stored))
        assert [k for k in new.order if k in keys] == keys
        assert new.duplicates() == {}
        r = d.client.post("/admin/sync")
        assert r["error"] is None and r["queued"]["ticket"] == 0
        # The stalled batch was the only one the old cloud saw; its session is closed.
        old_call(old.release())
        assert set(old.stored) == set(keys[:10])
        assert d.client.get("/health")["sync"]["endpoint"] == new.url
        assert d.proc.poll() is None


# -- in process: the same SyncService object, reloaded before and while it runs


def _config(tmp: Path, **sync: Any) -> Config:
    return parse_config(base_config(tmp / "st") | {"sync": sync})


async def test_reload_in_process_raises_the_bound_then_moves_endpoints(tmp_path: Path) -> None:
    old, new = FakeCloud(), FakeCloud()
    await old.start()
    await new.start()
    registry = CollectorRegistry()
    boot = _config(tmp_path, max_bytes="1KiB")
    async with Store(tmp_path / "edged.db", [SCHEMA]) as store:
        outbox = Outbox(store, boot.sync.max_bytes, registry)
        sync = SyncService(boot.sync, outbox, device_id="box-1", keys_dir=tmp_path,
                           registry=registry, audit=None)
        async with sync:
            fitted: list[str] = []
            with pytest.raises(InsufficientStorage):
                for i in range(40):
                    await outbox.enqueue(TICKET, f"t-{i:02}", {"subject": i})
                    fitted.append(f"t-{i:02}")
            assert fitted and _queued(await outbox.refresh()) == len(fitted)
            assert sync.health()["degraded"]
            # Not running yet: the swap happens inline. A larger bound lifts the refusal; the
            # same registry takes the new uploader (its histogram is carried, not re-made).
            await sync.reload(_config(tmp_path, endpoint=old.url, max_bytes="1MiB",
                                      rollup_interval="0"))
            assert not sync.health()["degraded"] and outbox.max_bytes == 1 << 20
            assert sync.health()["endpoint"] == old.url
            old.mode = "stall"
            task = asyncio.create_task(sync.run())
            try:
                assert await old.await_for(lambda c: len(c.requests) >= 1, 30)
                await sync.reload(_config(tmp_path, endpoint=new.url, rollup_interval="0"))
                assert await new.await_for(lambda c: set(fitted) <= set(c.stored), 30)
                assert new.order == fitted and new.duplicates() == {}
                assert old.stored == {}
                # sync now waits for the drain in progress: then every row is acknowledged.
                now = await sync.uploader.sync_now()
                assert now["error"] is None and sum(now["queued"].values()) == 0
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    await old.stop()
    await new.stop()


def _queued(usage: Usage) -> int:
    return sum(usage.rows.values())
