"""The aiohttp application on the Unix socket: roles, errors, metrics, drain."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from aiohttp import web

from edged.api.disconnect import CLIENT_CLOSED, answer, said_gone, status_of
from edged.api.keys import AUDITED, PEER, READ_TIMEOUT, REQUEST_ID
from edged.api.peer import RoleResolver, peer_credentials
from edged.errors import BadRequest, EdgedError, Forbidden, PayloadTooLarge, QueueFull, Unavailable
from edged.metrics import Metrics
from edged.roles import Role

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# X-Request-Id goes into the audit record verbatim: printable ASCII, bounded.
REQUEST_ID_MAX = 128


class RequestAudit(Protocol):
    """The audit record of each request (edged/audit/api.py)."""

    async def before(self, request: web.Request) -> bool:
        """Called once the peer may call the route, before the handler: check that the
        record can be written (raise ``BadRequest`` if not) and, for a request that may take
        effect, write it. Return whether it was written; raising refuses the request and
        nothing runs."""
        ...

    async def after(self, request: web.Request, status: int, seconds: float) -> None:
        """Called before the response leaves: the outcome."""
        ...


class RouteProvider(Protocol):
    def add_routes(self, app: web.Application) -> None: ...


def required_role(path: str) -> Role:
    """One table of who may call what: /admin is admin, /v1 is client, the rest anyone.
    /admin/approvals is open to clients: an agent's approver_groups decide there too, and
    the route checks who may (edged/agents/http.py)."""
    if path.startswith("/admin/approvals"):
        return Role.CLIENT
    if path.startswith("/admin"):
        return Role.ADMIN
    if path.startswith("/v1"):
        return Role.CLIENT
    return Role.NONE


def error_response(err: EdgedError) -> web.Response:
    resp = web.json_response(err.envelope(), status=err.status)
    if err.status == 408:
        resp.force_close()  # the rest of a late body is not worth waiting for
    if isinstance(err, QueueFull):
        resp.headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return resp


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               400: "bad_request"}


def _from_http_exception(e: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(e.status, "http_error")
    message = e.reason if e.status != 404 else "no such route"
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        message = "request body is too large"
    resp = web.json_response({"error": {"code": code, "message": message}}, status=e.status)
    if e.status == 405 and "Allow" in e.headers:
        resp.headers["Allow"] = e.headers["Allow"]
    return resp


def _check_length(request: web.Request, max_body: int) -> None:
    """Refuse a declared oversized body before any handler runs, whatever the route; a
    chunked body is still capped by ``client_max_size`` when a handler reads it."""
    length = request.content_length
    if length is not None and length > max_body:
        raise PayloadTooLarge(f"request body of {length} bytes is larger than the limit of "
                              f"{max_body} bytes (daemon.max_body)")


def _check_headers(request: web.Request) -> None:
    """Refuse header values that are not text before anything reads them: aiohttp keeps
    undecodable bytes as surrogates, which no record or log line can hold."""
    for name, value in request.headers.items():
        try:
            value.encode("utf-8")
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "backslashreplace").decode("ascii", "replace")[:64]
            raise BadRequest(f"header {shown}: value is not valid UTF-8",
                             code="bad_header") from None
    request_id = request.headers.get("X-Request-Id")
    if request_id is None:
        return
    if not 0 < len(request_id) <= REQUEST_ID_MAX or not request_id.isprintable() \
            or not request_id.isascii():
        raise BadRequest(f"header X-Request-Id: expected 1 to {REQUEST_ID_MAX} printable "
                         f"ASCII characters, got {len(request_id)} characters",
                         code="bad_header")
    request[REQUEST_ID] = request_id


class ApiState:
    """What the middlewares share: the drain flag and the in-flight count."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


async def _report(audit: RequestAudit, request: web.Request, resp: web.StreamResponse,
                  status: int, started: float) -> web.StreamResponse:
    """Record the outcome. If that fails for a request that has taken no effect, answer
    with the error rather than as if it had been recorded; one whose record was written
    first keeps its answer (a client told "failed" would retry what was done)."""
    try:
        await audit.after(request, status, time.perf_counter() - started)
    except EdgedError as e:
        log.error("%s %s: outcome not audited: %s", request.method, request.path, e.message)
        if resp.prepared or request.get(AUDITED):
            return resp
        return error_response(e)
    return resp


def build_app(*, resolver: RoleResolver, metrics: Metrics, max_body: int,
              state: ApiState, providers: Iterable[RouteProvider],
              audit: RequestAudit | None = None,
              read_timeout: float = 30.0) -> web.Application:

    @web.middleware
    async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        started = time.perf_counter()
        status = 500
        state.enter()
        metrics.in_flight.inc()
        try:
            resp = await answer(handler, request)
            status = status_of(request, resp)
            if audit is not None:
                resp = await _report(audit, request, resp, status, started)
                status = status_of(request, resp)
            if status == CLIENT_CLOSED:
                said_gone(request)
            return resp
        finally:
            state.leave()
            metrics.in_flight.dec()
            metrics.requests.labels(name, request.method, str(status)).inc()
            metrics.latency.labels(name, request.method).observe(time.perf_counter() - started)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if state.draining:
                raise Unavailable("edged is shutting down", code="draining")
            _check_length(request, max_body)
            _check_headers(request)
            return await handler(request)
        except EdgedError as e:
            if e.status >= 500 and not isinstance(e, Unavailable):
                log.error("%s %s failed: %s", request.method, request.path, e.message)
            return error_response(e)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _from_http_exception(e)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return web.json_response(
                {"error": {"code": "internal", "message": "internal error; see the daemon log"}},
                status=500)

    @web.middleware
    async def roles(request: web.Request, handler: Handler) -> web.StreamResponse:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        pid, uid, gid = peer_credentials(sock) if sock is not None else (0, -1, -1)
        peer = resolver.resolve(pid, uid, gid)
        request[PEER] = peer
        need = required_role(request.path)
        if peer.role < need:
            raise Forbidden(f"{request.path} needs the {need.name.lower()} role; "
                            f"uid {uid} has {peer.role.name.lower() if peer.role else 'none'}")
        return await handler(request)

    @web.middleware
    async def audited_first(request: web.Request, handler: Handler) -> web.StreamResponse:
        if audit is not None:
            request[AUDITED] = await audit.before(request)
        return await handler(request)

    app = web.Application(client_max_size=max_body,
                          middlewares=[track, errors, roles, audited_first])
    app[READ_TIMEOUT] = read_timeout
    for provider in providers:
        provider.add_routes(app)
    return app
