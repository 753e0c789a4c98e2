"""The audit log's place in the API: GET /admin/audit/verify, and one record per request."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from edged.api.keys import BODY, PEER
from edged.audit.config import AuditConfig
from edged.audit.log import AuditLog
from edged.audit.verify import Limit, verify

# Body fields that name what a request used; never the prompt itself.
_SUBJECT_FIELDS = ("model", "session_id")
_PROMPT_FIELDS = ("messages", "message", "input", "prompt")


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


class RequestAuditor:
    """The API's ``on_request`` hook: route, peer, outcome and duration of every request
    (``api.refused`` for a 403), durable before the response leaves."""

    def __init__(self, log: AuditLog, config: AuditConfig) -> None:
        self._log = log
        self._log_prompts = config.log_prompts

    async def __call__(self, request: web.Request, status: int, seconds: float) -> None:
        peer = request.get(PEER)
        resource = request.match_info.route.resource
        data: dict[str, Any] = {
            "method": request.method,
            "route": resource.canonical if resource is not None else None,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "uid": peer.uid if peer else None,
            **{k: v for k, v in request.match_info.items()},
        }
        request_id = request.headers.get("X-Request-Id")
        if request_id:
            data["request_id"] = request_id[:128]
        if request.method == "POST" and status not in (403, 413):
            data.update(await self._body_facts(request))
        kind = "api.refused" if status == 403 else "api.request"
        await self._log.append(kind, f"uid:{peer.uid}" if peer else "unknown", data)

    async def _body_facts(self, request: web.Request) -> dict[str, Any]:
        # Only a body the handler accepted: it is valid, bounded JSON and already parsed.
        body = request.get(BODY)
        if not isinstance(body, dict):
            return {}
        facts = {k: body[k] for k in _SUBJECT_FIELDS if isinstance(body.get(k), str)}
        if self._log_prompts:
            facts.update({f"prompt_{k}": body[k] for k in _PROMPT_FIELDS if k in body})
        return facts
