"""Typed keys for what middlewares leave on a request."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edged.roles import Peer

PEER = web.RequestKey("edged_peer", Peer)
# the parsed JSON body, once a handler has read it (edged/api/body.py)
BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("edged_body", dict)
