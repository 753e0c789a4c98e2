"""Serving a remote alias through the local API, with the fallback when it cannot.

A request is validated as a local one would be (the same 400s), then sent in the server's
own terms. Whatever fails before anything reached the client goes to the alias's
``fallback`` (a local model) with what is left of the request's deadline; a stream that
breaks off after its first token ends with an error event and ``[DONE]``. Every response
names who served it: ``x-edged-served-by`` (and ``x-edged-fallback`` with the reason when
the fallback did).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from edged.api.keys import PEER
from edged.errors import EdgedError, Unavailable
from edged.models.remote import RemoteFailure, RemoteModel, RemoteStream, StreamCut
from edged.models.remotes import RemoteModels
from edged.models.requests import parse_chat, parse_embedding

log = logging.getLogger(__name__)

SERVED_BY: web.RequestKey[str] = web.RequestKey("edged_served_by", str)
FALLBACK: web.RequestKey[str] = web.RequestKey("edged_fallback", str)
LAST_WORDS = 2.0  # seconds a broken or cancelled stream may take to say it ends

# (request, body, deadline) -> the local answer; deadline is loop.time() or None.
LocalChat = Callable[[web.Request, dict[str, Any], float | None],
                     Awaitable[web.StreamResponse]]


async def add_served_by(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the header, on whole answers and streams alike."""
    served = request.get(SERVED_BY)
    if served is not None:
        response.headers["x-edged-served-by"] = served
    reason = request.get(FALLBACK)
    if reason is not None:
        response.headers["x-edged-fallback"] = reason


def who(request: web.Request) -> str:
    peer = request.get(PEER)
    return f"uid:{peer.uid}" if peer is not None else "unknown"


class RemoteChat:
    def __init__(self, remotes: RemoteModels, local: LocalChat,
                 request_timeout: Callable[[], float]) -> None:
        self._remotes = remotes
        self._local = local
        self._timeout = request_timeout

    async def chat(self, request: web.Request, body: dict[str, Any], remote: RemoteModel
                   ) -> web.StreamResponse:
        parse_chat(body)  # the same 400s as a local alias, before anything leaves
        deadline = asyncio.get_running_loop().time() + self._timeout()
        out, rec = remote.chat_body(body, who(request))
        try:
            if out.get("stream"):
                return await self._stream(request, remote, remote.stream(rec))
            data = await remote.post("/chat/completions", rec)
        except RemoteFailure as e:
            return await self._fall_back(request, body, remote, e, deadline)
        data["model"] = remote.spec.alias
        self._served(request, remote, remote.spec.alias)
        return web.json_response(data)

    async def embeddings(self, request: web.Request, body: dict[str, Any],
                         remote: RemoteModel) -> web.Response:
        """No fallback: another model's vectors are not comparable with these."""
        parse_embedding(body)
        _out, rec = remote.embedding_body(body, who(request))
        data = await remote.post("/embeddings", rec)
        data["model"] = remote.spec.alias
        self._served(request, remote, remote.spec.alias)
        return web.json_response(data)

    async def _fall_back(self, request: web.Request, body: dict[str, Any],
                         remote: RemoteModel, error: RemoteFailure, deadline: float
                         ) -> web.StreamResponse:
        fallback = remote.spec.fallback
        if fallback is None:
            raise error
        remote.fell_back(error.reason)
        log.info("%s: served by the fallback %s (%s)", remote.spec.alias, fallback,
                 error.reason)
        self._served(request, remote, fallback)
        request[FALLBACK] = error.reason
        return await self._local(request, dict(body, model=fallback), deadline)

    def _served(self, request: web.Request, remote: RemoteModel, by: str) -> None:
        request[SERVED_BY] = by
        self._remotes.metrics.served.labels(remote.spec.alias, by).inc()

    async def _stream(self, request: web.Request, remote: RemoteModel, stream: RemoteStream
                      ) -> web.StreamResponse:
        head = await stream.start()  # RemoteFailure: nothing sent yet, the fallback answers
        self._served(request, remote, remote.spec.alias)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        error: BaseException | None = None
        try:
            await resp.prepare(request)
            for chunk in head:
                await _write(resp, remote, chunk)
            async for chunk in stream.rest():
                await _write(resp, remote, chunk)
            await resp.write(b"data: [DONE]\n\n")
        except StreamCut as e:
            error = e
            await _last_words(resp, e)
        except ConnectionResetError as e:
            error = e
            log.info("%s: client went away mid-stream", request.path)
        except asyncio.CancelledError as e:  # shutdown after its grace period
            error = e
            await _last_words(resp, Unavailable("edged is shutting down; this answer is "
                                                "incomplete", code="draining"))
            raise
        finally:
            await stream.aclose(error)
        return resp


async def _write(resp: web.StreamResponse, remote: RemoteModel, chunk: dict[str, Any]) -> None:
    chunk["model"] = remote.spec.alias
    data = json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)
    await resp.write(f"data: {data}\n\n".encode())


async def _last_words(resp: web.StreamResponse, error: EdgedError) -> None:
    """Bounded: a client that does not read must not hold the handler."""
    data = json.dumps(error.envelope(), separators=(",", ":"), ensure_ascii=False)
    with contextlib.suppress(Exception, asyncio.CancelledError):
        async with asyncio.timeout(LAST_WORDS):
            await resp.write(f"data: {data}\n\ndata: [DONE]\n\n".encode())
