"""The remote-management component: the manager, the puller and the admin routes.

GET /admin/config: the active version, its provenance, and the history.
POST /admin/config: the body is a signed bundle; ``?wait=true`` answers only after the
health window (confirmed, or 422 rolled_back).
POST /admin/config/pull: pull from the cloud now (``?wait=true`` as above).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from edged.api.body import read_body
from edged.api.keys import PEER
from edged.api.system import HealthSource
from edged.audit.sink import AuditSink
from edged.config import Config
from edged.errors import PayloadTooLarge
from edged.models.contract import Inference
from edged.remote.bundle import FleetKeys
from edged.remote.history import SCHEMA, History
from edged.remote.manager import RemoteManager
from edged.remote.pull import ConfigPuller
from edged.remote.reload import ReloadTarget
from edged.remote.versions import config_dir
from edged.store import Schema, Store
from edged.sync.queue import OutboxQueue


class RemoteComponent:
    schema: Schema = SCHEMA

    def __init__(self, config: Config, store: Store, *, targets: Sequence[ReloadTarget],
                 health: Mapping[str, HealthSource], audit: AuditSink | None = None,
                 outbox: OutboxQueue | None = None, inference: Inference | None = None,
                 ) -> None:
        self.store = store
        history = History(store, config.daemon.device_id, audit=audit, outbox=outbox)
        self.manager = RemoteManager(
            config, versions=config_dir(config), keys=FleetKeys(config.daemon.keys_dir / "fleet"),
            history=history, targets=targets, health=health, inference=inference)
        self.puller = ConfigPuller(lambda: self.manager.config, self._apply_pulled,
                                   self.manager.is_stale)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.manager.run(), name="remote-manager")
            tg.create_task(self.puller.run(), name="remote-pull")

    def health(self) -> dict[str, Any]:
        return self.manager.health()

    async def _apply_pulled(self, raw: bytes, wait: bool) -> dict[str, Any]:
        return await self.manager.apply(raw, source="pull", actor="cloud", wait=wait)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/admin/config", self._get)
        app.router.add_post("/admin/config", self._post)
        app.router.add_post("/admin/config/pull", self._pull)

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(await self.manager.status())

    async def _post(self, request: web.Request) -> web.Response:
        try:
            raw = await read_body(request)
        except PayloadTooLarge:
            raise PayloadTooLarge("bundle is larger than daemon.max_body",
                                  code="bundle_too_large") from None
        wait = _wants_wait(request)
        actor = f"uid:{request[PEER].uid}"
        return web.json_response(
            await self.manager.apply(raw, source="api", actor=actor, wait=wait))

    async def _pull(self, request: web.Request) -> web.Response:
        return web.json_response(await self.puller.pull(_wants_wait(request)))


def _wants_wait(request: web.Request) -> bool:
    return request.query.get("wait", "") in ("1", "true", "yes")
