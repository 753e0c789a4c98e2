"""Sync through the real daemon: status and `sync now` over the CLI, rollups in OTLP, and
a SIGKILL mid-batch after which every ticket still arrives exactly once after dedupe.

Tickets are queued into the daemon's own database with the real Outbox before the daemon
starts (no test-only route): that is exactly what survives a restart on a real box.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from edged.store import Store
from edged.sync.outbox import SCHEMA, Outbox
from edged.sync.queue import TICKET
from tests.edgedtest import RunningDaemon, cli
from tests.sync.fakecloud import threaded_cloud


def queue_tickets(state_dir: Path, keys: list[str]) -> None:
    async def fill() -> None:
        async with Store(state_dir / "edged.db", [SCHEMA]) as store:
            outbox = Outbox(store, 1 << 30, CollectorRegistry())
            async with store.transaction() as db:
                for key in keys:
                    await outbox.enqueue_in(db, TICKET, key, {"subject": key})
    state_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(fill())


def sync_section(url: str, **extra: Any) -> dict[str, Any]:
    return {"sync": {"endpoint": url, "backoff_base": "50ms", "backoff_cap": "200ms",
                     "request_timeout": "5s", **extra}}


def test_status_now_and_rollups(edged: Callable[..., RunningDaemon], state_dir: Path) -> None:
    keys = [f"t-{i:03}" for i in range(12)]
    queue_tickets(state_dir, keys)
    with threaded_cloud() as (cloud, _call):
        cloud.mode = "500"
        d = edged({**sync_section(cloud.url, backoff_base="1h", backoff_cap="1h",
                                  rollup_interval="300ms"), "audit": {"checkpoint_every": 3}})
        assert cloud.wait_for(lambda c: len(c.requests) >= 1)
        status = cli("sync", "status", "--json", socket_path=d.socket)
        assert status.returncode == 0, status.stderr
        s = json.loads(status.stdout)
        assert s["queued"]["ticket"] == 12 and s["failures"] >= 1
        assert "HTTP 500" in s["last_error"] and s["next_attempt"] is not None
        human = cli("sync", "status", socket_path=d.socket)
        assert "ticket:" in human.stdout and "HTTP 500" in human.stdout

        failed = cli("sync", "now", socket_path=d.socket)
        assert failed.returncode == 1 and "HTTP 500" in failed.stderr
        cloud.mode = "ok"
        now = cli("sync", "now", "--json", socket_path=d.socket)
        assert now.returncode == 0, now.stderr
        # The uploader's own loop may have taken some first (any new row wakes it).
        assert json.loads(now.stdout)["queued"]["ticket"] == 0
        assert cloud.order[:12] == keys and cloud.duplicates() == {}

        assert cloud.wait_for(lambda c: len(c.metric_keys) >= 1)
        # Audit checkpoints are a real producer: API requests are audited, every 3rd record
        # checkpoints, and the checkpoint travels to its own route.
        for _ in range(4):
            d.client.get("/health")
        d.client.post("/admin/sync")
        assert cloud.wait_for(lambda c: any(v["route"] == "/v1/audit/checkpoints"
                                            for v in c.stored.values()))
        assert all(k.startswith("rollup:test-box:") for k in cloud.metric_keys)
        health = d.client.get("/health")
        assert health["status"] == "ok" and health["sync"]["queued"]["ticket"] == 0
        metrics = d.client.get("/metrics")
        assert 'edged_outbox_rows{kind="ticket"} 0.0' in metrics
        assert 'edged_sync_delivery_lag_seconds_count{kind="ticket"} 12.0' in metrics


def test_sync_now_without_an_endpoint_says_so_as_a_config_pull_does(
        edged: Callable[..., RunningDaemon]) -> None:
    d = edged()
    body = d.client.post("/admin/sync")
    assert body["status"] == "no_endpoint" and body["sent"] == {} and body["error"] is None
    assert d.client.post("/admin/config/pull")["status"] == "no_endpoint"
    r = cli("sync", "now", socket_path=d.socket)
    assert r.returncode == 0 and "sync.endpoint is not set" in r.stdout
    assert "not set (queueing only)" in cli("sync", "status", socket_path=d.socket).stdout


def test_sigkill_mid_batch_then_restart_delivers_every_ticket_once(
        edged: Callable[..., RunningDaemon], state_dir: Path) -> None:
    keys = [f"k-{i:03}" for i in range(45)]
    queue_tickets(state_dir, keys)
    with threaded_cloud() as (cloud, call):
        # The first batch is stored by the cloud, whose ack never comes: kill -9 then.
        cloud.script = ["store_then_stall"]
        config = sync_section(cloud.url, batch_rows=10)
        first = edged(config)
        assert cloud.wait_for(lambda c: len(c.stored) == 10)
        assert first.kill() == -9
        call(cloud.release())
        second = edged(config)
        assert cloud.wait_for(lambda c: set(keys) <= set(c.stored))
        assert cloud.order == keys
        # Only the unacknowledged batch came twice, with the same keys.
        assert cloud.duplicates() == dict.fromkeys(keys[:10], 2)
        assert set(cloud.sent) == set(keys)
        r = second.client.post("/admin/sync")
        assert r["error"] is None and r["queued"]["ticket"] == 0


def test_outbox_at_its_bound_refuses_checkpoints_and_says_so(
        edged: Callable[..., RunningDaemon], state_dir: Path) -> None:
    # No endpoint: audit checkpoints (one every 2 records) pile up until the bound.
    d = edged({"sync": {"max_bytes": "3KiB"}, "audit": {"checkpoint_every": 2}})
    for _ in range(40):
        d.client.get("/health")
    health = d.client.get("/health")
    assert health["status"] == "degraded", health["sync"]
    assert health["sync"]["degraded"] and "outbox is full" in health["sync"]["message"]
    assert health["sync"]["queued_bytes"] <= 3 * 1024
    metrics = d.client.get("/metrics")
    assert 'edged_outbox_refused_total{kind="checkpoint"}' in metrics
    assert d.stop() == 0
    export = cli("audit", "export", "--state-dir", str(state_dir),
                 "--keys-dir", str(state_dir / "keys"))
    assert export.returncode == 0, export.stderr
    alerts = [json.loads(line) for line in export.stdout.splitlines()
              if '"sync.outbox_full"' in line]
    assert alerts and alerts[0]["data"]["refused"][0]["kind"] == "checkpoint"


def test_an_unreadable_ca_file_stops_the_daemon_with_exit_78(
        edged: Callable[..., RunningDaemon], state_dir: Path) -> None:
    d = edged({"sync": {"endpoint": "https://fleet.test", "ca_file": str(state_dir / "nope.pem")}},
              expect_ready=False)
    assert d.proc.wait(60) == 78
    assert "sync.ca_file" in d.log() and "nope.pem" in d.log()


def test_cloud_down_at_start_then_back(edged: Callable[..., RunningDaemon],
                                       state_dir: Path) -> None:
    keys = [f"d-{i:03}" for i in range(30)]
    queue_tickets(state_dir, keys)
    with threaded_cloud() as (cloud, call):
        call(cloud.down())
        d = edged(sync_section(cloud.url, backoff_base="1h", backoff_cap="1h"))
        r = d.client.post("/admin/sync")
        assert r["sent"] == {} and "Connect" in r["error"] and r["queued"]["ticket"] == 30
        call(cloud.up())
        r = d.client.post("/admin/sync")
        assert r["error"] is None and r["sent"]["ticket"] == 30
        assert cloud.order == keys and cloud.duplicates() == {}


def test_the_last_rollup_is_queued_at_shutdown_and_sent_after_restart(
        edged: Callable[..., RunningDaemon], state_dir: Path) -> None:
    with threaded_cloud() as (cloud, _call):
        config = sync_section(cloud.url, rollup_interval="1h")
        first = edged(config)
        first.client.get("/health")
        assert first.stop() == 0
        assert cloud.metric_keys == []
        db = sqlite3.connect(state_dir / "edged.db")
        try:
            (queued,) = db.execute("SELECT count(*) FROM outbox WHERE kind = 'metrics'").fetchone()
        finally:
            db.close()
        assert queued == 1
        edged(config)
        assert cloud.wait_for(lambda c: len(c.metric_keys) == 1)
