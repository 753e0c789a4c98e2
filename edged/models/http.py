"""The OpenAI-compatible routes and the model admin routes.

Streams are Server-Sent Events. Admission, loading and queueing happen before the response
starts, so a 404, 429 or 503 is an ordinary JSON error; once streaming, a client that goes
away makes the next write fail, which closes the token stream and frees the worker. A stream
still running when shutdown's grace period ends is cancelled; it then ends with an error
event (``draining``) and ``[DONE]``, so a client knows the answer is incomplete.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import math
import secrets
import struct
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from edged.api.body import json_object
from edged.api.remote_chat import SERVED_BY, RemoteChat, add_served_by
from edged.errors import BadRequest, EdgedError, Unavailable
from edged.models.chat_format import FORMATS
from edged.models.contract import Generation
from edged.models.manager import ModelManager
from edged.models.outputs import Answer, CallStart, Event, Output, Text
from edged.models.remotes import RemoteModels
from edged.models.requests import (
    ChatRequest,
    dumps,
    parse_chat,
    parse_completion,
    parse_embedding,
)
from edged.models.responses import ResponseEvents, ResponseStore, parse_response
from edged.models.streams import TokenStream

log = logging.getLogger(__name__)

MAX_PS_WAIT = 60.0
LAST_WORDS = 2.0  # seconds a cancelled stream may take to tell the client it ends


def _usage(gen: Generation) -> dict[str, Any]:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": gen.cached_tokens}}


def _finish(reason: str) -> str:
    return "stop" if reason == "cancelled" else reason


def _chat_message(req: ChatRequest, answer: Answer) -> tuple[dict[str, Any], str]:
    if answer.call is None:
        return {"role": "assistant", "content": answer.text}, answer.finish_reason
    call = answer.call
    function = {"name": call.name, "arguments": call.arguments}
    finish = answer.finish_reason
    if req.legacy_functions:
        return ({"role": "assistant", "content": None, "function_call": function},
                "function_call" if finish == "tool_calls" else finish)
    return ({"role": "assistant", "content": None,
             "tool_calls": [{"id": call.id, "type": "function", "function": function}]}, finish)


class ModelRoutes:
    def __init__(self, manager: ModelManager, remotes: RemoteModels | None = None) -> None:
        self._models = manager
        self._remotes = remotes
        self._remote_chat = RemoteChat(remotes, self._chat, manager.request_timeout) \
            if remotes is not None else None
        self._streaming: set[asyncio.Task[Any]] = set()
        self._responses = ResponseStore()

    def add_routes(self, app: web.Application) -> None:
        app.on_shutdown.append(self._cut_streams)
        app.on_response_prepare.append(add_served_by)
        r = app.router
        r.add_get("/v1/models", self.list_models)
        r.add_get("/v1/models/{alias}", self.get_model)
        r.add_post("/v1/chat/completions", self.chat)
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/responses", self.responses)
        r.add_post("/v1/embeddings", self.embeddings)
        r.add_post("/v1/classify", self.classify)
        r.add_get("/admin/ps", self.ps)
        r.add_post("/admin/models/{alias}/load", self.load)
        r.add_post("/admin/models/{alias}/unload", self.unload)

    async def list_models(self, request: web.Request) -> web.Response:
        remote = self._remotes.catalog_view() if self._remotes is not None else []
        return web.json_response({"object": "list",
                                  "data": [*await self._models.catalog_view(), *remote]})

    async def get_model(self, request: web.Request) -> web.Response:
        alias = request.match_info["alias"]
        remote = self._remote(alias)
        if remote is not None and self._remotes is not None:
            return web.json_response(self._remotes.entry(remote))
        return web.json_response(await self._models.catalog_entry(alias))

    def _remote(self, alias: object) -> Any:
        return self._remotes.get(alias) if self._remotes is not None else None

    def _local_only(self, body: dict[str, Any], route: str) -> None:
        alias = body.get("model")
        if self._remote(alias) is not None:
            raise BadRequest(f"model: {alias!r} is a remote alias; {route} is for local "
                             "models only (a remote one takes /v1/chat/completions and "
                             "/v1/embeddings)", code="remote_unsupported")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await json_object(request)
        remote = self._remote(body.get("model"))
        if remote is None or self._remote_chat is None:
            return await self._chat(request, body, None)
        task = asyncio.current_task()
        assert task is not None
        self._streaming.add(task)  # a remote stream is cut at shutdown like a local one
        try:
            return await self._remote_chat.chat(request, body, remote)
        finally:
            self._streaming.discard(task)

    async def _chat(self, request: web.Request, body: dict[str, Any], deadline: float | None
                    ) -> web.StreamResponse:
        """A local model's answer; ``deadline``: what is left of a remote alias's."""
        req = parse_chat(body, self._tool_rounds)
        if deadline is not None:
            req = dataclasses.replace(
                req, params=dataclasses.replace(req.params, deadline=deadline))
        request[SERVED_BY] = req.model
        ident = f"chatcmpl-{secrets.token_hex(12)}"
        output = self.output(req)
        if req.stream:
            stream = self._models.stream_chat(req.model, req.messages, req.params)
            return await self._sse(request, stream, _ChatChunks(ident, req, output))
        gen = await self._models.chat(req.model, req.messages, req.params)
        output.feed(gen.text)
        message, finish = _chat_message(req, output.end(gen)[1])
        return web.json_response({
            "id": ident, "object": "chat.completion", "created": int(time.time()),
            "model": req.model, "usage": _usage(gen),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        })

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """The Responses API (edged/models/responses.py); errors in its shape: a ``type``
        and the ``param`` the message names."""
        try:
            return await self._respond(request)
        except EdgedError as e:
            e.details.setdefault("type", "invalid_request_error" if e.status < 500
                                 else "server_error")
            field = e.message.split(":", 1)[0]
            e.details.setdefault("param", field if field and " " not in field else None)
            raise

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        body = await json_object(request)
        self._local_only(body, "/v1/responses")
        req = parse_response(body, self._responses, self._tool_rounds)
        request[SERVED_BY] = req.chat.model
        events = ResponseEvents(req, self.output(req.chat), self._responses)
        chat = req.chat
        if chat.stream:
            stream = self._models.stream_chat(chat.model, chat.messages, chat.params)
            return await self._sse(request, stream, _ResponseFrames(events))
        gen = await self._models.chat(chat.model, chat.messages, chat.params)
        return web.json_response(events.whole(gen))

    def output(self, req: ChatRequest) -> Output:
        """How the answer to ``req`` is read: the model's turn markers and the request's
        stops held back, calls told from text."""
        spec = self._models.spec(req.model)
        stops = (*FORMATS[spec.chat_format].stops, *req.params.stop)
        return Output(stops, req.tools, calls=req.tool_mode != "none" and not req.answer_in_text)

    def _tool_rounds(self, alias: str) -> int:
        return self._models.spec(alias).tool_rounds

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await json_object(request)
        self._local_only(body, "/v1/completions")
        req = parse_completion(body)
        request[SERVED_BY] = req.model
        ident = f"cmpl-{secrets.token_hex(12)}"
        if req.stream:
            stream = self._models.stream(req.model, req.prompt, req.params)
            return await self._sse(request, stream, _CompletionChunks(ident, req.model))
        gen = await self._models.complete(req.model, req.prompt, req.params)
        return web.json_response({
            "id": ident, "object": "text_completion", "created": int(time.time()),
            "model": req.model, "usage": _usage(gen),
            "choices": [{"index": 0, "text": gen.text, "logprobs": None,
                         "finish_reason": _finish(gen.finish_reason)}],
        })

    async def _sse(self, request: web.Request, stream: TokenStream,
                   chunks: _Frames) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._streaming.add(task)
        try:
            return await _sse(request, stream, chunks)
        finally:
            self._streaming.discard(task)

    async def _cut_streams(self, _app: web.Application) -> None:
        """aiohttp runs this once the grace period is over and before it closes the
        connections: cancel each running stream now, while it can still say it ends."""
        tasks = list(self._streaming)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=LAST_WORDS)

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        remote = self._remote(body.get("model"))
        if remote is not None and self._remote_chat is not None:
            return await self._remote_chat.embeddings(request, body, remote)
        req = parse_embedding(body)
        request[SERVED_BY] = req.model
        vectors, tokens = await self._models.embed_counted(req.model, req.texts)
        size = len(vectors[0]) if vectors else 0
        if req.dimensions is not None and req.dimensions != size:
            # Truncating would only be meaningful for Matryoshka-trained models.
            raise BadRequest(f"dimensions: model {req.model!r} makes {size}-dimensional "
                             f"embeddings; other sizes are not supported")
        data = [{"object": "embedding", "index": i,
                 "embedding": _b64(v) if req.base64 else v} for i, v in enumerate(vectors)]
        return web.json_response({"object": "list", "data": data, "model": req.model,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def classify(self, request: web.Request) -> web.Response:
        """edged's own: class scores from a classifier model (ONNX ``kind = "classifier"``)."""
        body = await json_object(request)
        self._local_only(body, "/v1/classify")
        req = parse_embedding(body)
        request[SERVED_BY] = req.model
        scores, labels = await self._models.classify_labeled(req.model, req.texts)
        data = []
        for i, row in enumerate(scores):
            item: dict[str, Any] = {"index": i, "scores": row}
            if labels and row:
                item["label"] = labels[max(range(len(row)), key=row.__getitem__)]
            data.append(item)
        return web.json_response({"object": "list", "model": req.model, "labels": list(labels),
                                  "data": data})

    async def ps(self, request: web.Request) -> web.Response:
        """``?generation=N&wait=S`` long-polls until the loaded set changes past N."""
        generation = _query_number(request, "generation")
        wait = min(_query_number(request, "wait") or 0.0, MAX_PS_WAIT)
        if generation is not None and wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._models.wait_change(int(generation))
        return web.json_response(self._models.ps())

    async def load(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        pin = body.get("pin", False)
        if not isinstance(pin, bool):
            raise BadRequest(f"pin: expected true or false, got {pin!r}")
        alias = request.match_info["alias"]
        self._local_only({"model": alias}, "loading")
        return web.json_response(await self._models.load(alias, pin=pin))

    async def unload(self, request: web.Request) -> web.Response:
        alias = request.match_info["alias"]
        self._local_only({"model": alias}, "unloading")
        return web.json_response(await self._models.unload(alias))


def _query_number(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name}: {raw!r} is not a finite number")
    if value < 0:
        raise BadRequest(f"{name}: must not be negative")
    return value


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class _Frames:
    """What a stream sends: frames before, per piece, after and on error. Chat and text
    completions end with ``[DONE]``; the Responses API names each event instead."""

    def opening(self) -> list[dict[str, Any]]:
        return []

    def piece(self, text: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def end(self, gen: Generation | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def error(self, error: EdgedError) -> list[dict[str, Any]]:
        return [error.envelope()]

    def closing(self) -> list[str]:
        return ["[DONE]"]

    def frame(self, data: dict[str, Any] | str) -> bytes:
        payload = data if isinstance(data, str) else dumps(data)
        return f"data: {payload}\n\n".encode()


class _ChatChunks(_Frames):
    def __init__(self, ident: str, req: ChatRequest, output: Output) -> None:
        self._ident = ident
        self._req = req
        self._output = output
        self._created = int(time.time())
        self._first = True

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"id": self._ident, "object": "chat.completion.chunk", "created": self._created,
                "model": self._req.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def piece(self, text: str) -> list[dict[str, Any]]:
        return [self._event(e) for e in self._output.feed(text)]

    def _event(self, event: Event) -> dict[str, Any]:
        delta: dict[str, Any]
        if isinstance(event, Text):
            delta = {"content": event.text}
        elif self._req.legacy_functions:
            delta = {"function_call": {"name": event.name, "arguments": ""}
                     if isinstance(event, CallStart) else {"arguments": event.text}}
        elif isinstance(event, CallStart):
            delta = {"tool_calls": [{"index": 0, "id": event.id, "type": "function",
                                     "function": {"name": event.name, "arguments": ""}}]}
        else:
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": event.text}}]}
        if self._first:
            delta["role"] = "assistant"
            self._first = False
        return self._chunk(delta, None)

    def end(self, gen: Generation | None) -> list[dict[str, Any]]:
        if gen is None:
            return [self._chunk({}, "stop")]
        events, answer = self._output.end(gen)
        chunks = [self._event(e) for e in events]
        chunks.append(self._chunk({}, _chat_message(self._req, answer)[1]))
        if self._req.include_usage:
            chunks.append({**self._chunk({}, None), "choices": [], "usage": _usage(gen)})
        return chunks


class _CompletionChunks(_Frames):
    def __init__(self, ident: str, model: str) -> None:
        self._ident = ident
        self._model = model
        self._created = int(time.time())

    def _chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        return {"id": self._ident, "object": "text_completion", "created": self._created,
                "model": self._model,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": finish}]}

    def piece(self, text: str) -> list[dict[str, Any]]:
        return [self._chunk(text, None)]

    def end(self, gen: Generation | None) -> list[dict[str, Any]]:
        return [self._chunk("", _finish(gen.finish_reason if gen else "stop"))]


class _ResponseFrames(_Frames):
    """Responses API events: ``event: <type>`` with the event as data; no ``[DONE]``."""

    def __init__(self, events: ResponseEvents) -> None:
        self._events = events

    def opening(self) -> list[dict[str, Any]]:
        return self._events.opening()

    def piece(self, text: str) -> list[dict[str, Any]]:
        return self._events.piece(text)

    def end(self, gen: Generation | None) -> list[dict[str, Any]]:
        return self._events.end(gen or Generation("", "stop"))

    def error(self, error: EdgedError) -> list[dict[str, Any]]:
        return self._events.error(error.envelope())

    def closing(self) -> list[str]:
        return []

    def frame(self, data: dict[str, Any] | str) -> bytes:
        assert isinstance(data, dict)
        return f"event: {data['type']}\ndata: {dumps(data)}\n\n".encode()


async def _start_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    return resp


async def _send(resp: web.StreamResponse, frames: _Frames,
                data: Sequence[dict[str, Any] | str]) -> None:
    for item in data:
        await resp.write(frames.frame(item))


async def _sse(request: web.Request, stream: TokenStream, frames: _Frames
               ) -> web.StreamResponse:
    """Stream pieces as SSE. The first piece is awaited before the response starts, so
    refusals (404/429/503) and bad prompts still get a proper status."""
    try:
        first = await anext(stream, None)
    except BaseException:
        await stream.aclose()
        raise
    resp = await _start_sse(request)
    try:
        await _send(resp, frames, frames.opening())
        await _send(resp, frames, frames.piece(first) if first is not None else [])
        async for piece in stream:
            await _send(resp, frames, frames.piece(piece))
        await _send(resp, frames, frames.end(stream.result))
        await _send(resp, frames, frames.closing())
    except ConnectionResetError:
        log.info("%s: client went away mid-stream; generation stopped", request.path)
    except EdgedError as e:  # failed after the stream started: say so in the stream
        await _send(resp, frames, frames.error(e))
    except asyncio.CancelledError:  # shutdown after its grace period (see _cut_streams)
        await _cut_short(resp, frames)
        raise
    finally:
        await stream.aclose()
    return resp


async def _cut_short(resp: web.StreamResponse, frames: _Frames) -> None:
    """End a cancelled stream the way every stream ends, so the client sees an incomplete
    answer rather than a connection that just stops. Bounded: the client may not read."""
    error = Unavailable("edged is shutting down; this answer is incomplete", code="draining")
    with contextlib.suppress(Exception, asyncio.CancelledError):
        async with asyncio.timeout(LAST_WORDS):
            await _send(resp, frames, [*frames.error(error), *frames.closing()])
            await resp.write_eof()
