"""GET /health and GET /metrics: open to any peer."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from edged import __version__
from edged.api.keys import PEER
from edged.metrics import Metrics
from edged.roles import HealthSource


class SystemRoutes:
    """Health gathers one dict from each component; a dict with ``"degraded": true`` makes
    the whole status degraded."""

    def __init__(self, metrics: Metrics, sources: Mapping[str, HealthSource]) -> None:
        self._metrics = metrics
        self._sources = sources
        self._started = time.monotonic()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)

    def snapshot(self) -> dict[str, Any]:
        parts = {name: source() for name, source in self._sources.items()}
        degraded = any(part.get("degraded") for part in parts.values())
        return {
            "status": "degraded" if degraded else "ok",
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 1),
            **parts,
        }

    async def health(self, request: web.Request) -> web.Response:
        body = self.snapshot()
        body["peer"] = request[PEER].describe()
        return web.json_response(body)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(),
                            headers={"Content-Type": self._metrics.content_type})
