"""The socket: drain on shutdown, and the socket file's mode. (Claiming a socket in use, a
stale one, and an inherited one are tested on the real daemon in tests/test_daemon.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.api.inprocess import Served
from tests.edgedtest import RunningDaemon


async def test_drain_lets_the_request_in_flight_finish(served: Served) -> None:
    slow = asyncio.create_task(served.call("GET", "/v1/slow"))
    await served.release.entered.wait()
    drain = asyncio.create_task(served.server.drain(grace=30))
    # The drain task runs before the loop gets to this new request, so it is refused.
    status, body, _ = await served.call("GET", "/whoami")
    assert (status, body["error"]["code"]) == (503, "draining")
    served.release.go.set()
    status, body, _ = await slow
    assert (status, body) == (200, {"slow": "done"})
    await drain
    assert not served.path.exists()


async def test_drain_cancels_what_outlives_the_grace_period(served: Served) -> None:
    slow = asyncio.create_task(served.call("GET", "/v1/slow"))
    await served.release.entered.wait()
    await served.server.drain(grace=0.05)
    with pytest.raises(aiohttp.ClientError):
        await slow
    assert not served.path.exists()


async def test_the_socket_file_is_0660_by_default(served: Served) -> None:
    assert served.path.stat().st_mode & 0o777 == 0o660


def test_the_socket_file_has_the_configured_mode(daemon: RunningDaemon) -> None:
    assert Path(daemon.socket).stat().st_mode & 0o777 == 0o666
