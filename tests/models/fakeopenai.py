"""A stand-in OpenAI-compatible server that misbehaves on command.

Each remote alias under test gets its own prefix (``http://127.0.0.1:PORT/<name>/v1``) and
its own mode: ok, 400, 500, stall, garbage, reset (a stream broken after two tokens), cut
(the connection closed before the answer or its first token), stall_mid (a stream that
stops sending after two tokens), facts (answers with the Facts line of an agent's
prompt). Every request body it received is kept, so a test can
read what left the box.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

MODES = ("ok", "500", "stall", "garbage", "reset", "cut", "stall_mid", "400", "facts")


class FakeOpenAI:
    def __init__(self) -> None:
        self.modes: dict[str, str] = {}
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.headers: dict[str, list[dict[str, str]]] = {}
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}/v1"

    def hits(self, name: str) -> int:
        return len(self.received.get(name, []))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}/v1/chat/completions", self._chat)
        app.router.add_post("/{name}/v1/embeddings", self._embeddings)
        self._release = asyncio.Event()
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _take(self, request: web.Request) -> tuple[str, str, dict[str, Any]]:
        name = request.match_info["name"]
        body = await request.json()
        self.received.setdefault(name, []).append(body)
        self.headers.setdefault(name, []).append(dict(request.headers))
        return name, self.modes.get(name, "ok"), body

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        _name, mode, body = await self._take(request)
        if mode == "500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if mode == "400":
            return web.json_response({"error": {"message": "bad temperature"}}, status=400)
        if mode == "stall":
            await self._release.wait()
        if mode == "garbage":
            return web.Response(text="<html>proxy error</html>", content_type="text/html")
        words = ["Hello", " from", " the", " back", " room", "."]
        if mode == "facts":  # a good model: the facts it was given, in one sentence
            prompt = str(body["messages"][-1]["content"])
            words = [prompt.split("Facts: ", 1)[-1].split("\n", 1)[0]]
        if mode == "cut" and not body.get("stream"):  # the connection drops, no answer
            _abort(request)
            return web.Response()
        if not body.get("stream"):
            return web.json_response(_completion(body, "".join(words)))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if mode == "cut":
            await resp.write(b": keep-alive\n\n")
            _abort(request)
            return resp
        await resp.write(_sse(_chunk(body, {"role": "assistant"}, None)))
        for i, word in enumerate(words):
            if i == 2 and mode == "reset":
                _abort(request)
                return resp
            if i == 2 and mode == "stall_mid":
                await self._release.wait()
            await resp.write(_sse(_chunk(body, {"content": word}, None)))
        await resp.write(_sse(_chunk(body, {}, "stop")))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        _name, mode, body = await self._take(request)
        if mode == "500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        data = [{"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0, 0.0]}
                for i, t in enumerate(body["input"])]
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": 1, "total_tokens": 1}})


def _completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}}


def _chunk(body: dict[str, Any], delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


@contextmanager
def threaded_openai() -> Iterator[tuple[FakeOpenAI, Callable[[Any], Any]]]:
    """The stand-in on its own loop in a thread; yields it and ``call(coro)``."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-openai", daemon=True)
    thread.start()

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    fake = FakeOpenAI()
    call(fake.start())
    try:
        yield fake, call
    finally:
        call(fake.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
