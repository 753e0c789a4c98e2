"""One connection on the API socket, bounded against slow, idle and malformed clients.

aiohttp's ``RequestHandler`` with what it lacks:

- a header timeout: once a request's first byte arrives, its headers must follow within
  ``daemon.read_timeout`` (else 408 and close); the body has the same bound where it is read
  (``edged/api/body.py``); aiohttp's keep-alive timer, set to ``daemon.idle_timeout``,
  closes a connection that sends no request at all;
- a bound on open connections (``daemon.max_connections``): past it the oldest idle
  connection is closed to make room, so the API keeps serving; only when none is idle is
  the new one answered 503 and closed;
- protocol errors (what aiohttp's parser refuses) answered in the JSON envelope and logged
  in one bounded warning line; HTTP versions other than 1.0 and 1.1 get 505.

It reaches into ``RequestHandler``'s private state (``_messages``, ``_waiter``,
``_request_in_progress``): pyproject pins aiohttp's minor version for that, and
tests/api/test_connection.py covers each behaviour.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

log = logging.getLogger(__name__)

_VERSIONS = (HttpVersion10, HttpVersion11)
_SHOWN = 200  # characters of a parser's message kept in the answer and the log
_CODES = {400: "bad_http", 408: "request_timeout", 413: "payload_too_large",
          417: "expectation_failed",
          431: "headers_too_large", 500: "internal", 501: "not_implemented",
          503: "too_many_connections", 505: "http_version_not_supported"}


@dataclass(frozen=True)
class Limits:
    read_timeout: float
    idle_timeout: float
    max_connections: int


def envelope(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code or _CODES.get(status, "bad_http"), "message": message}}


def raw_answer(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 response, for when no request object exists to answer through."""
    body = json.dumps(envelope(status, message)).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def _shown(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


class Connection(RequestHandler):
    def __init__(self, manager: Server, *, limits: Limits, **kwargs: Any) -> None:
        # lingering_time: how long the unread rest of a refused body (413, 408) is drained
        # before the connection closes
        super().__init__(manager, keepalive_timeout=limits.idle_timeout,
                         lingering_time=limits.read_timeout, **kwargs)
        self._limits = limits
        self._header_timer: asyncio.TimerHandle | None = None

    # -- the bound on open connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if manager is None or len(manager.connections) <= self._limits.max_connections:
            return
        idle = next((c for c in manager.connections
                     if c is not self and isinstance(c, Connection) and c.idle()), None)
        if idle is not None:
            log.debug("%d connections open (daemon.max_connections): closing the oldest idle",
                      len(manager.connections))
            idle.force_close()
            return
        log.warning("%d connections open, none idle (daemon.max_connections): refusing one",
                    len(manager.connections))
        self._answer_and_close(503, f"too many open connections (daemon.max_connections = "
                                    f"{self._limits.max_connections}); try again shortly")

    def idle(self) -> bool:
        """No request queued or running: waiting for one (or for its headers)."""
        return not self._messages and not self._request_in_progress

    # -- the header timeout, and HTTP versions

    def data_received(self, data: bytes) -> None:
        waiting = self.idle()
        super().data_received(data)
        self._refuse_unanswerable()
        if not self.idle():
            self._stop_header_timer()
        elif waiting and data and self._header_timer is None:
            self._header_timer = asyncio.get_running_loop().call_later(
                self._limits.read_timeout, self._headers_late)

    def _refuse_unanswerable(self) -> None:
        """What aiohttp would answer before the application sees it, in its own words:
        another HTTP version, an Expect other than 100-continue (aiohttp's 417 is text, and
        500 for a value that is not text)."""
        for msg, _payload in self._messages:
            if not isinstance(msg, RawRequestMessage):
                continue
            if msg.version not in _VERSIONS:
                version = f"HTTP/{msg.version.major}.{msg.version.minor}"
                self._answer_and_close(505, f"{_shown(version)} is not supported; "
                                            "edged speaks HTTP/1.1 (and 1.0)")
                return
            expect = msg.headers.get("Expect")
            if expect is not None and expect.lower() != "100-continue":
                self._answer_and_close(417, "header Expect: only 100-continue is supported")
                return

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.idle() and self.transport is not None:
            self._answer_and_close(408, f"request headers did not arrive within "
                                        f"daemon.read_timeout ({self._limits.read_timeout:g}s)")

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _answer_and_close(self, status: int, message: str) -> None:
        self._messages.clear()
        if self._request_in_progress:
            # pipelined behind a request being answered: no bytes of ours between its
            # response's; close once it is done
            self.close()
            return
        if self.transport is not None:
            self.transport.write(raw_answer(status, message))
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    # -- what aiohttp's parser refuses, in the envelope

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500 and status not in _CODES:
            status = 500
        if status == 400 and "Invalid HTTP version" in (message or ""):
            status = 505  # HTTP/1.2, HTTP/0.9...: the parser knows only 1.x; 2.0 parses
        if status == 500:
            log.error("error handling a request", exc_info=exc)
            text = "internal error; see the daemon log"
        else:
            text = _shown(message or str(exc) or HTTPStatus(status).phrase)
            # one line, where aiohttp logged a traceback (tests/test_logsetup.py)
            first = (message or str(exc) or "").strip().splitlines()[:1]
            self.logger.warning("malformed HTTP request: %s", _shown(first[0] if first else
                                                                       str(status)))
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; cannot send the error")
        resp = web.json_response(envelope(status, text), status=status)
        resp.force_close()
        return resp


class EdgedServer(Server):
    """aiohttp's ``Server`` making ``Connection`` protocols."""

    limits: Limits

    def __call__(self) -> RequestHandler:
        return Connection(self, limits=self.limits, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # Same object, our protocol factory: aiohttp builds the Server from private
        # application state, which is not ours to rebuild.
        server.__class__ = EdgedServer
        assert isinstance(server, EdgedServer)
        server.limits = self._limits
        return server
