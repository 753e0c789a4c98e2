"""A client that leaves before its answer: counted as 499 (nginx's "client closed
request"), logged once at debug, never as a server error.

aiohttp cancels a request's task when its connection is lost. Routes whose only work is the
answer (inference) take that cancellation: the model stops at its next token or batch. Every
other route runs to its end, shielded, so what it does (a ticket, a config switch, a model
load) and its audit records are whole whether or not the client is still there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499
CANCEL_WHEN_LEFT = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                              "/v1/classify"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def answer(handler: Handler, request: web.Request) -> web.StreamResponse:
    """The handler's response, or one with status 499 when the client left first."""
    resource = request.match_info.route.resource
    try:
        if resource is not None and resource.canonical in CANCEL_WHEN_LEFT:
            return await handler(request)
        return await _to_the_end(handler, request)
    except ConnectionResetError:
        pass  # read or written after the client left
    except asyncio.CancelledError:
        if not client_gone(request):
            raise  # shutdown cancelling what outlived the grace period
        _uncancel()
    return web.Response(status=CLIENT_CLOSED)


def status_of(request: web.Request, resp: web.StreamResponse) -> int:
    """The status to count and record: 499 when the client is gone, whatever the handler
    made of it (a stream ends "normally", a cut body reads as bad JSON)."""
    return CLIENT_CLOSED if client_gone(request) else resp.status


def said_gone(request: web.Request) -> None:
    log.debug("%s %s: the client left before its answer", request.method, request.path)


async def _to_the_end(handler: Handler, request: web.Request) -> web.StreamResponse:
    task = asyncio.ensure_future(handler(request))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not client_gone(request):
            task.cancel()
            raise
        _uncancel()
    await asyncio.wait([task])  # a second cancellation (shutdown) cancels this wait
    return task.result()


def _uncancel() -> None:
    """The cancellation was the client leaving, handled here: later awaits (the audit
    record of the outcome) must not see it as pending."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
