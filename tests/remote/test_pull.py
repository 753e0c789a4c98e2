"""Pulling bundles from a local stand-in cloud: conditional requests, and every outcome
reported back through the outbox."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.client import ApiError
from tests.edgedtest import RunningDaemon, base_config, deep_merge, short_tmpdir, start_daemon
from tests.remote.fleet import bundle, pushed_doc, trust


@dataclass
class ConfigCloud:
    """Serves one bundle per device with an ETag; takes the events the box reports."""

    bundle: bytes | None = None
    etag: str = '"0"'
    seen: list[tuple[str | None, int]] = field(default_factory=list)  # (If-None-Match, status)
    events: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    def publish(self, raw: bytes, etag: str) -> None:
        self.bundle, self.etag = raw, etag

    async def get_config(self, request: web.Request) -> web.Response:
        asked = request.headers.get("If-None-Match")
        if request.match_info["device"] != "test-box" or self.bundle is None:
            resp = web.Response(status=404)
        elif asked == self.etag:
            resp = web.Response(status=304, headers={"ETag": self.etag})
        else:
            resp = web.Response(body=self.bundle, headers={"ETag": self.etag},
                                content_type="application/json")
        self.seen.append((asked, resp.status))
        return resp

    async def take(self, request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        items = next(iter(v for v in doc.values() if isinstance(v, list)), [])
        if request.path == "/v1/events":
            self.events.extend(items)
        return web.json_response({"accepted": [i["key"] for i in items]})


@pytest.fixture(scope="module")
def cloud() -> Iterator[ConfigCloud]:
    c = ConfigCloud()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/v1/devices/{device}/config", c.get_config)
    app.router.add_post("/v1/events", c.take)
    app.router.add_post("/v1/tickets", c.take)
    app.router.add_post("/v1/audit/checkpoints", c.take)
    runner = web.AppRunner(app, handle_signals=False)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    c.port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield c
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()


@dataclass
class Box:
    daemon: RunningDaemon
    key: Ed25519PrivateKey
    state: Path
    extra: dict[str, Any]


@pytest.fixture(scope="module")
def box(cloud: ConfigCloud) -> Iterator[Box]:
    tmp = short_tmpdir()
    state = tmp / "st"
    key = Ed25519PrivateKey.generate()
    trust(state / "keys", key)
    extra = {"sync": {"endpoint": f"http://127.0.0.1:{cloud.port}"},
             "remote": {"health_window": "0.2s", "pull_interval": "1h"}}
    daemon = start_daemon(deep_merge(base_config(state), extra), state_dir=state)
    try:
        yield Box(daemon, key, state, extra)
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_pull_applies_then_costs_one_304(cloud: ConfigCloud, box: Box) -> None:
    assert box.daemon.client.post("/admin/config/pull") == {"status": "none"}
    cloud.publish(bundle(box.key, pushed_doc(box.state, box.extra), 1), '"v1"')
    first = box.daemon.client.post("/admin/config/pull?wait=true")
    assert first["status"] == "applied" and first["version"] == 1
    assert first["state"] == "confirmed"
    second = box.daemon.client.post("/admin/config/pull")
    assert second == {"status": "not_modified"}
    assert cloud.seen[-2:] == [(None, 200), ('"v1"', 304)]
    status = box.daemon.client.get("/admin/config")
    assert status["active"]["version"] == 1 and status["active"]["source"] == "pull"
    assert status["active"]["actor"] == "cloud"


def test_a_bad_pulled_bundle_is_refused_once_and_reported(cloud: ConfigCloud,
                                                          box: Box) -> None:
    stranger = Ed25519PrivateKey.generate()
    cloud.publish(bundle(stranger, pushed_doc(box.state, box.extra), 7), '"bad"')
    with pytest.raises(ApiError) as err:
        box.daemon.client.post("/admin/config/pull")
    assert err.value.code == "unknown_fleet_key"
    assert box.daemon.client.post("/admin/config/pull") == {"status": "not_modified"}
    assert box.daemon.client.get("/admin/config")["active"]["version"] == 1
    box.daemon.client.post("/admin/sync")
    reported = [e for e in cloud.events if e["key"].startswith("config:test-box:")]
    kinds = [json.dumps(e) for e in reported]
    assert any("config.applied" in k for k in kinds), kinds
    assert any("config.rejected" in k and "unknown_fleet_key" in k for k in kinds), kinds


def test_an_old_bundle_from_the_cloud_is_ignored_quietly(cloud: ConfigCloud, box: Box) -> None:
    cloud.publish(bundle(box.key, pushed_doc(box.state, box.extra), 1), '"v1-again"')
    assert box.daemon.client.post("/admin/config/pull") == {"status": "up_to_date"}
    history = box.daemon.client.get("/admin/config")["history"]
    assert history[0]["outcome"] != "rejected" or history[0]["code"] != "stale_version"
