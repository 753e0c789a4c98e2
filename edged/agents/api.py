"""GET /v1/agents and POST /v1/agents/{name}/chat (JSON, or SSE with ``"stream": true``)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from edged.agents.runtime import AgentRuntime, describe
from edged.api.body import json_fields
from edged.api.keys import PEER
from edged.errors import BadRequest, EdgedError


class AgentRoutes:
    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/agents", self.list_agents)
        app.router.add_post("/v1/agents/{name}/chat", self.chat)

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
