"""The audit log's place in the API: GET /admin/audit/verify, and the records of requests.

A request that may take effect (any method but GET, HEAD and OPTIONS) is recorded as
``api.request`` before its handler runs, and its outcome as ``api.response`` afterwards:
if the first record cannot be written, the handler never runs. Other requests get one
``api.request`` record with their outcome, checked before the handler and durable before
the response leaves.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from edged.api.body import json_object
from edged.api.keys import BODY, PEER, REQUEST_ID
from edged.audit.config import AuditConfig
from edged.audit.log import AuditLog, check_event
from edged.audit.verify import Limit, verify
from edged.errors import BadRequest

# Body fields that name what a request used; never the prompt itself.
_SUBJECT_FIELDS = ("model", "session_id")
_PROMPT_FIELDS = ("messages", "message", "input", "prompt")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# the seq of a request's api.request record, written before its handler ran
_SEQ: web.RequestKey[int] = web.RequestKey("edged_audit_seq", int)


class AuditRoutes:
    def __init__(self, log: AuditLog) -> None:
        self._log = log

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/admin/audit/verify", self.verify)

    async def verify(self, request: web.Request) -> web.Response:
        tip = self._log.tip()
        report = await asyncio.to_thread(verify, self._log.folder, self._log.keys,
                                         Limit(tip.path, tip.size, tip.seq))
        return web.json_response(report.as_dict())


def _text(value: str) -> str:
    """A path parameter as recordable text (undecodable bytes shown escaped)."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


class RequestAuditor:
    """The API's ``RequestAudit``: route, peer, outcome and duration of every request
    (``api.refused`` for a 403)."""

    def __init__(self, log: AuditLog, config: AuditConfig) -> None:
        self._log = log
        self._log_prompts = config.log_prompts

    async def before(self, request: web.Request) -> bool:
        data = self._facts(request)
        actor = _actor(request)
        if request.method in _SAFE_METHODS:
            check_event("api.request", actor, {**data, "status": 0, "duration_ms": 0.0})
            return False
        data.update(await self._body_facts(request))
        check_event("api.request", actor, data)
        request[_SEQ] = await self._log.append("api.request", actor, data)
        return True

    async def after(self, request: web.Request, status: int, seconds: float) -> None:
        outcome: dict[str, Any] = {"status": status, "duration_ms": round(seconds * 1000, 3)}
        seq = request.get(_SEQ)
        if seq is not None:
            data = {**self._facts(request, params=False), "request_seq": seq, **outcome}
            await self._log.append("api.response", _actor(request), data)
            return
        # GET and the like, and requests refused before ``before`` ran (403, 413, a bad
        # header, draining): nothing took effect.
        kind = "api.refused" if status == 403 else "api.request"
        await self._log.append(kind, _actor(request), {**self._facts(request), **outcome})

    @staticmethod
    def _facts(request: web.Request, *, params: bool = True) -> dict[str, Any]:
        peer = request.get(PEER)
        resource = request.match_info.route.resource
        data: dict[str, Any] = {
            "method": request.method,
            "route": resource.canonical if resource is not None else None,
            "uid": peer.uid if peer else None,
        }
        if params:
            data.update({k: _text(v) for k, v in request.match_info.items()})
        request_id = request.get(REQUEST_ID)  # checked by the API before any of this
        if request_id:
            data["request_id"] = request_id
        return data

    async def _body_facts(self, request: web.Request) -> dict[str, Any]:
        if BODY not in request:
            try:
                await json_object(request)  # too large: refused here, before anything runs
            except BadRequest:
                return {}  # not JSON (a bundle) or bad JSON: the handler says which
        body = request[BODY]
        facts = {k: body[k] for k in _SUBJECT_FIELDS if isinstance(body.get(k), str)}
        if self._log_prompts:
            facts.update({f"prompt_{k}": body[k] for k in _PROMPT_FIELDS if k in body})
        return facts


def _actor(request: web.Request) -> str:
    peer = request.get(PEER)
    return f"uid:{peer.uid}" if peer else "unknown"
