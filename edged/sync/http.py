"""POST /admin/sync: try to send the outbox now (``edged sync now``)."""

from __future__ import annotations

from aiohttp import web

from edged.sync.service import SyncService


class SyncRoutes:
    def __init__(self, sync: SyncService) -> None:
        self._sync = sync

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/admin/sync", self._sync_now)

    async def _sync_now(self, request: web.Request) -> web.Response:
        return web.json_response(await self._sync.uploader.sync_now())
