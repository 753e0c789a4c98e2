"""Typed keys for what middlewares leave on a request."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edged.roles import Peer

PEER = web.RequestKey("edged_peer", Peer)
# daemon.read_timeout: how long a request body may take to arrive (edged/api/body.py)
READ_TIMEOUT = web.AppKey("edged_read_timeout", float)
# the parsed JSON body, once a handler has read it (edged/api/body.py)
BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("edged_body", dict)
# the X-Request-Id header, once checked (edged/api/app.py)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("edged_request_id", str)
# whether the request's audit record was written before its handler ran
AUDITED: web.RequestKey[bool] = web.RequestKey("edged_audited", bool)
