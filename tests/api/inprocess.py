"""An in-process API server on a real Unix socket, with routes of the test's own.

The routes here reach every error path whatever routes the components have; the real
daemon's own routes are checked in test_system.py and test_roles.py.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edged.api.app import ApiState, build_app
from edged.api.body import json_fields
from edged.api.connection import Limits
from edged.api.keys import PEER
from edged.api.peer import RoleResolver
from edged.api.server import DEFAULT_LIMITS, ApiServer
from edged.errors import QueueFull
from edged.metrics import Metrics
from tests.edgedtest import short_tmpdir

MAX_BODY = 1024


class Release:
    """An event the slow route waits on, so a test decides when it finishes."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.arrivals: asyncio.Queue[None] = asyncio.Queue()  # one per request that entered
        self.go = asyncio.Event()


class EchoRoutes:
    def __init__(self, release: Release) -> None:
        self._release = release

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/echo", self.echo)
        app.router.add_get("/v1/boom", self.boom)
        app.router.add_get("/v1/full", self.full)
        app.router.add_get("/v1/slow", self.slow)
        app.router.add_get("/whoami", self.whoami)

    async def echo(self, request: web.Request) -> web.Response:
        body = await json_fields(request)
        text = body.str("text")
        times = body.int("times", 1, min=1, max=10)
        body.done()
        return web.json_response({"echo": text * times})

    async def boom(self, request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    async def full(self, request: web.Request) -> web.Response:
        raise QueueFull("the queue is full", retry_after=2.6)

    async def slow(self, request: web.Request) -> web.Response:
        self._release.entered.set()
        self._release.arrivals.put_nowait(None)
        await self._release.go.wait()
        return web.json_response({"slow": "done"})

    async def whoami(self, request: web.Request) -> web.Response:
        return web.json_response(request[PEER].describe())


@dataclass
class Served:
    path: Path
    server: ApiServer
    state: ApiState
    metrics: Metrics
    release: Release
    session: aiohttp.ClientSession

    async def call(self, method: str, route: str, **kw: Any) -> tuple[int, Any, Any]:
        async with self.session.request(method, f"http://edged{route}", **kw) as resp:
            return resp.status, await resp.json(), resp.headers


@asynccontextmanager
async def serve(limits: Limits = DEFAULT_LIMITS) -> AsyncIterator[Served]:
    """The app on a socket in a fresh folder; closed and removed afterwards."""
    folder = short_tmpdir()
    path = folder / "api.sock"
    state, metrics, release = ApiState(), Metrics(), Release()
    server = ApiServer(None, state, path, 0o660, limits)
    server.claim()
    server.app = build_app(resolver=RoleResolver(("edged-admin",), ("edged",)), metrics=metrics,
                           max_body=MAX_BODY, state=state, providers=[EchoRoutes(release)],
                           read_timeout=limits.read_timeout)
    await server.start()
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)))
    try:
        yield Served(path, server, state, metrics, release, session)
    finally:
        await session.close()
        release.go.set()
        await server.close()
        shutil.rmtree(folder, ignore_errors=True)
