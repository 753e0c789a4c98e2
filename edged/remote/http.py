"""The remote-management admin routes.

GET /admin/config: the active version, its provenance, and the history.
POST /admin/config: the body is a signed bundle; ``?wait=true`` answers only after the
health window (confirmed, or 422 rolled_back).
POST /admin/config/pull: pull from the cloud now (``?wait=true`` as above).
"""

from __future__ import annotations

from aiohttp import web

from edged.api.body import read_body
from edged.api.keys import PEER
from edged.errors import PayloadTooLarge
from edged.remote.component import RemoteComponent


class RemoteRoutes:
    def __init__(self, remote: RemoteComponent) -> None:
        self._remote = remote

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/admin/config", self._get)
        app.router.add_post("/admin/config", self._post)
        app.router.add_post("/admin/config/pull", self._pull)

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(await self._remote.manager.status())

    async def _post(self, request: web.Request) -> web.Response:
        try:
            raw = await read_body(request)
        except PayloadTooLarge:
            raise PayloadTooLarge("bundle is larger than daemon.max_body",
                                  code="bundle_too_large") from None
        wait = _wants_wait(request)
        actor = f"uid:{request[PEER].uid}"
        return web.json_response(
            await self._remote.manager.apply(raw, source="api", actor=actor, wait=wait))

    async def _pull(self, request: web.Request) -> web.Response:
        return web.json_response(await self._remote.puller.pull(_wants_wait(request)))


def _wants_wait(request: web.Request) -> bool:
    return request.query.get("wait", "") in ("1", "true", "yes")
