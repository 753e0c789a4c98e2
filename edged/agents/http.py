"""GET /v1/agents and POST /v1/agents/{name}/chat (JSON, or SSE with ``"stream": true``);
GET /admin/approvals and POST /admin/approvals/{id} for staff approval."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from edged.agents.approvals import STATES, Approvals
from edged.agents.runtime import AgentRuntime, describe
from edged.api.body import json_fields
from edged.api.keys import PEER
from edged.errors import BadRequest, EdgedError, Forbidden, Unavailable
from edged.roles import Peer, Role


class AgentRoutes:
    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/agents", self.list_agents)
        app.router.add_post("/v1/agents/{name}/chat", self.chat)
        app.router.add_get("/admin/approvals", self.list_approvals)
        app.router.add_post("/admin/approvals/{id}", self.decide)

    def _may_decide(self, peer: Peer) -> set[str] | None:
        """The agents this peer approves for; None for an admin (any). Approvers reach these
        /admin routes with the client role (edged/api/app.py)."""
        if peer.role >= Role.ADMIN:
            return None
        mine = {name for name, a in self._runtime.agents.items()
                if set(a.spec.approver_groups) & peer.groups}
        if not mine:
            raise Forbidden("approvals need the admin role or an agent's approver_groups; "
                            f"uid {peer.uid} has neither")
        return mine

    async def list_approvals(self, request: web.Request) -> web.Response:
        may = self._may_decide(request[PEER])
        state = request.query.get("state")
        if state is not None and state not in STATES:
            raise BadRequest(f"state: expected one of {', '.join(STATES)}")
        approvals = self._approvals()
        items = [r.view() for r in await approvals.list(state)
                 if may is None or r.agent in may]
        return web.json_response({"object": "list", "data": items})

    async def decide(self, request: web.Request) -> web.Response:
        may = self._may_decide(request[PEER])
        body = await json_fields(request)
        approve = body.bool("approve")
        body.done()
        req = await self._approvals().decide(request.match_info["id"], approve,
                                             request[PEER].uid, may)
        return web.json_response(req.view())

    def _approvals(self) -> Approvals:
        if self._runtime.approvals is None:
            raise Unavailable("approvals are not available", code="no_approvals")
        return self._runtime.approvals

    async def list_agents(self, request: web.Request) -> web.Response:
        agents = self._runtime.visible(request[PEER])
        return web.json_response({"object": "list", "data": [describe(a) for a in agents]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await json_fields(request)
        message = body.str("message")
        session_id = body.str("session_id", None)
        token = body.str("token", None)
        stream = body.bool("stream", False)
        body.done()
        if session_id is not None and not session_id.strip():
            raise BadRequest("session_id: must not be empty")
        name, peer = request.match_info["name"], request[PEER]
        if not stream:
            turn = await self._runtime.chat(name, peer, message, session_id, token)
            return web.json_response(turn.body())
        self._runtime.agent_for(name, peer)  # 404/403 before the stream starts
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(event: dict[str, Any]) -> None:
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())

        try:
            turn = await self._runtime.chat(name, peer, message, session_id, token, send)
            await send({"type": "reply", "text": turn.reply})
            await send({"type": "done", **turn.body()})
        except EdgedError as e:  # headers are gone; the error travels as an event
            await send({"type": "error", **e.envelope()})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
