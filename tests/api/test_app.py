"""The middleware stack (errors, limits, drain) served in-process on a real Unix socket.

The routes here are the test's own, so every error path can be reached whatever routes the
other components have; tests/api/test_routes.py checks the same envelope on the real daemon.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edged.api.app import ApiState, build_app, required_role
from edged.api.body import json_fields
from edged.api.keys import PEER
from edged.api.peer import Role, RoleResolver
from edged.api.server import ApiServer
from edged.errors import QueueFull
from edged.metrics import Metrics
from tests.edgedtest import short_tmpdir

MAX_BODY = 1024


class Release:
    """An event the slow route waits on, so a test decides when it finishes."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
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


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    folder = short_tmpdir()
    path = folder / "api.sock"
    state, metrics, release = ApiState(), Metrics(), Release()
    server = ApiServer(None, state, path, 0o660)
    server.claim()
    server.app = build_app(resolver=RoleResolver(("edged-admin",), ("edged",)), metrics=metrics,
                           max_body=MAX_BODY, state=state, providers=[EchoRoutes(release)])
    await server.start()
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)))
    try:
        yield Served(path, server, state, metrics, release, session)
    finally:
        await session.close()
        release.go.set()
        await server.close()
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_valid_body_is_read(served: Served) -> None:
    status, body, _ = await served.call("POST", "/v1/echo", json={"text": "ab", "times": 2})
    assert (status, body) == (200, {"echo": "abab"})


@pytest.mark.parametrize(("raw", "fragment"), [
    (b'{"text": "a"', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b'["text"]', "must be a JSON object"),
])
async def test_malformed_json_is_a_400_envelope(served: Served, raw: bytes, fragment: str) -> None:
    status, body, _ = await served.call("POST", "/v1/echo", data=raw)
    assert status == 400
    assert body["error"]["code"] == "invalid_json"
    assert fragment in body["error"]["message"]


@pytest.mark.parametrize(("doc", "message"), [
    ({}, "text: required key is missing"),
    ({"text": 3}, "text: expected a string, got 3"),
    ({"text": "a", "times": 99}, "times: 99 is above the maximum 10"),
    ({"text": "a", "colour": "red"}, "colour: unknown key"),
])
async def test_a_bad_field_is_named(served: Served, doc: dict[str, Any], message: str) -> None:
    status, body, _ = await served.call("POST", "/v1/echo", json=doc)
    assert status == 400
    assert body["error"] == {"code": "bad_request", "message": message}


async def test_a_declared_oversized_body_is_a_413(served: Served) -> None:
    status, body, _ = await served.call("POST", "/v1/echo", data=b"x" * (MAX_BODY + 1))
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert "daemon.max_body" in body["error"]["message"]


async def test_a_chunked_oversized_body_is_a_413(served: Served) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * MAX_BODY

    status, body, _ = await served.call("POST", "/v1/echo", data=chunks())
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"


async def test_unknown_route_and_wrong_method(served: Served) -> None:
    status, body, _ = await served.call("GET", "/v1/nope")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body, headers = await served.call("GET", "/v1/echo")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")
    assert headers["Allow"] == "POST"


async def test_an_unhandled_error_is_a_500_envelope_without_internals(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    status, body, _ = await served.call("GET", "/v1/boom")
    assert status == 500
    assert body == {"error": {"code": "internal", "message": "internal error; see the daemon log"}}
    assert "secret internals" in caplog.text  # logged once, at the boundary


async def test_queue_full_carries_retry_after(served: Served) -> None:
    status, body, headers = await served.call("GET", "/v1/full")
    assert (status, body["error"]["code"], headers["Retry-After"]) == (429, "queue_full", "3")


async def test_peer_credentials_name_the_caller(served: Served) -> None:
    status, body, _ = await served.call("GET", "/whoami")
    assert status == 200
    assert body["uid"] == 0 and body["role"] == "admin"


async def test_requests_are_counted_by_route_and_status(served: Served) -> None:
    await served.call("GET", "/v1/nope")
    await served.call("POST", "/v1/echo", json={"text": "a"})
    text = served.metrics.render().decode()
    assert ('edged_http_requests_total{method="POST",route="/v1/echo",status="200"} 1.0'
            in text)
    assert 'edged_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'edged_http_request_seconds_count{method="POST",route="/v1/echo"} 1.0' in text


async def test_drain_lets_the_request_in_flight_finish(served: Served) -> None:
    slow = asyncio.create_task(served.call("GET", "/v1/slow"))
    await served.release.entered.wait()
    drain = asyncio.create_task(served.server.drain(grace=30))
    # The drain task runs before the loop gets to this new request, so it is refused.
    status, body, _ = await served.call("GET", "/whoami")
    assert (status, body["error"]["code"]) == (503, "draining")
    served.release.go.set()
    status, body, _ = await slow
    assert (status, body) == (200, {"slow": "done"})
    await drain
    assert not served.path.exists()


async def test_drain_cancels_what_outlives_the_grace_period(served: Served) -> None:
    slow = asyncio.create_task(served.call("GET", "/v1/slow"))
    await served.release.entered.wait()
    await served.server.drain(grace=0.05)
    with pytest.raises(aiohttp.ClientError):
        await slow
    assert not served.path.exists()


def test_roles_are_in_one_table() -> None:
    assert required_role("/admin/ps") is Role.ADMIN
    assert required_role("/v1/models") is Role.CLIENT
    assert required_role("/health") is Role.NONE


def test_a_peer_role_follows_its_groups() -> None:
    # uid 65534 (nobody) with gid 65534 (nogroup) on this Debian box: client through the group.
    client = RoleResolver(("edged-admin",), ("nogroup",)).resolve(1, 65534, 65534)
    assert (client.role, "nogroup" in client.groups) == (Role.CLIENT, True)
    assert RoleResolver(("nogroup",), ()).resolve(1, 65534, 65534).role is Role.ADMIN
    assert RoleResolver(("edged-admin",), ("edged",)).resolve(1, 65534, 65534).role is Role.NONE
    assert RoleResolver((), ()).resolve(1, 0, 0).role is Role.ADMIN
    assert RoleResolver((), ()).resolve(1, os.getuid(), 12345).role >= Role.CLIENT
