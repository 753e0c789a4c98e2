"""Typed keys for what middlewares leave on a request."""

from __future__ import annotations

from aiohttp import web

from edged.api.peer import Peer

PEER = web.RequestKey("edged_peer", Peer)
