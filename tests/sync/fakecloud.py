"""A local stand-in for the fleet backend: implements docs/cloud-api.md and misbehaves on
command (down, 500, stall, reset mid-body, store-then-lose-the-ack).

It dedupes by key like a real backend must, and also records every key it was sent, so a
test can tell "arrived exactly once after dedupe" from "was never sent twice".
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from edged.sync.rollup import KEY_ATTRIBUTE

FIELDS = {"/v1/tickets": "tickets", "/v1/audit/checkpoints": "checkpoints",
          "/v1/events": "events"}
# ok | 400 | 500 | 503 | stall | reset | lose_ack | store_then_stall
MODES = ("ok", "400", "500", "503", "stall", "reset", "lose_ack", "store_then_stall")


class FakeCloud:
    def __init__(self, *, token: str | None = None, ssl_context: ssl.SSLContext | None = None
                 ) -> None:
        self.token = token
        self._ssl = ssl_context
        self.mode = "ok"
        self.retry_after: str | None = None  # Retry-After on 4xx/5xx answers
        self.script: list[str] = []  # modes for the next requests, then `mode`
        self.stored: dict[str, dict[str, Any]] = {}  # key -> item, per contract (deduped)
        self.order: list[str] = []  # keys in the order first stored
        self.sent = Counter[str]()  # key -> times it arrived (before dedupe)
        self.requests: list[tuple[str, str]] = []  # (path, mode) of every request
        self.metric_keys: list[str] = []
        self.headers: list[dict[str, str]] = []
        self._cond = threading.Condition()
        self._release: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    # -- lifecycle (on the loop that serves)

    async def start(self) -> None:
        app = web.Application()
        for path in FIELDS:
            app.router.add_post(path, self._json)
        app.router.add_post("/v1/metrics", self._metrics)
        self._release = asyncio.Event()
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        await self.up()

    async def up(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ssl)
        await self._site.start()
        if not self.port:
            server = self._site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Stop listening: clients get connection refused, like a cloud out of reach."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def stop(self) -> None:
        assert self._release is not None and self._runner is not None
        self._release.set()
        await self._runner.cleanup()

    async def release(self) -> None:
        """End every stall in progress; later stalls wait again."""
        assert self._release is not None
        self._release.set()
        self._release = asyncio.Event()

    # -- what tests wait on and look at

    def wait_for(self, predicate: Callable[[FakeCloud], bool], timeout: float = 60) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    async def await_for(self, predicate: Callable[[FakeCloud], bool], within: float = 60
                        ) -> bool:
        return await asyncio.to_thread(self.wait_for, predicate, within)

    def duplicates(self) -> dict[str, int]:
        return {k: n for k, n in self.sent.items() if n > 1}

    # -- handlers

    def _next_mode(self, path: str) -> str:
        with self._cond:
            mode = self.script.pop(0) if self.script else self.mode
            self.requests.append((path, mode))
            self._cond.notify_all()
        return mode

    def _authorized(self, request: web.Request) -> bool:
        return self.token is None or request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _before(self, request: web.Request) -> tuple[str, web.Response | None]:
        with self._cond:
            self.headers.append(dict(request.headers))
        if not self._authorized(request):
            return "ok", web.json_response({"error": "bad token"}, status=401)
        mode = self._next_mode(request.path)
        if mode in ("400", "500", "503"):
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            return mode, web.json_response({"error": "boom"}, status=int(mode), headers=headers)
        if mode == "stall":
            assert self._release is not None
            await self._release.wait()
            return mode, web.json_response({"error": "stalled"}, status=503)
        if mode == "reset":
            await request.content.read(1)
            _abort(request)
            return mode, web.Response(status=500)
        return mode, None

    async def _after_store(self, request: web.Request, mode: str) -> bool:
        """Misbehave after storing: lose the ack (True means do not answer)."""
        if mode == "store_then_stall":
            assert self._release is not None
            await self._release.wait()
        if mode in ("lose_ack", "store_then_stall"):
            _abort(request)
            return True
        return False

    async def _json(self, request: web.Request) -> web.Response:
        mode, early = await self._before(request)
        if early is not None:
            return early
        doc = json.loads(await request.read())
        items = doc[FIELDS[request.path]]
        self._store(request.path, items)
        if await self._after_store(request, mode):
            return web.Response(status=500)
        return web.json_response({"accepted": [item["key"] for item in items]})

    def _store(self, path: str, items: list[dict[str, Any]]) -> None:
        with self._cond:
            for item in items:
                self.sent[item["key"]] += 1
                if item["key"] not in self.stored:
                    self.stored[item["key"]] = {**item, "route": path}
                    self.order.append(item["key"])
            self._cond.notify_all()

    async def _metrics(self, request: web.Request) -> web.Response:
        mode, early = await self._before(request)
        if early is not None:
            return early
        req = ExportMetricsServiceRequest()
        req.ParseFromString(await request.read())
        keys = [a.value.string_value for rm in req.resource_metrics
                for a in rm.resource.attributes if a.key == KEY_ATTRIBUTE]
        with self._cond:
            self.metric_keys.extend(keys)
        self._store("/v1/metrics", [{"key": k} for k in keys])
        if await self._after_store(request, mode):
            return web.Response(status=500)
        return web.Response(body=ExportMetricsServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


@contextmanager
def threaded_cloud(**kw: Any) -> Iterator[tuple[FakeCloud, Callable[[Any], Any]]]:
    """A cloud on its own loop in a thread, for tests that drive the daemon subprocess.
    Yields the cloud and ``call(coro)``, which runs a coroutine on the cloud's loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-cloud", daemon=True)
    thread.start()

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    cloud = FakeCloud(**kw)
    call(cloud.start())
    try:
        yield cloud, call
    finally:
        call(cloud.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
