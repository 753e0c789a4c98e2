"""Slow, idle and malformed clients: bounded in time and number, answered in the envelope."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edged.api.connection import Limits
from tests.api.inprocess import Served, serve
from tests.api.raw import RawResponse, parse
from tests.edgedtest import RunningDaemon

LIMITS = Limits(read_timeout=0.3, idle_timeout=0.6, max_connections=4)


@pytest.fixture
async def tight() -> AsyncIterator[Served]:
    async with serve(LIMITS) as s:
        yield s


async def opened(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(path))


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the daemon sends before it closes (bounded by the test's timeout)."""
    return await asyncio.wait_for(reader.read(), 30)


def assert_envelope(resp: RawResponse, status: int, code: str) -> None:
    assert resp.status == status, resp
    assert resp.headers["content-type"].startswith("application/json"), resp
    assert resp.json()["error"]["code"] == code, resp


async def test_partial_headers_get_408_then_close(tight: Served) -> None:
    reader, writer = await opened(tight.path)
    writer.write(b"GET /whoami HTTP/1.1\r\nHost: ed")
    assert_envelope(parse(await until_closed(reader)), 408, "request_timeout")
    writer.close()


async def test_a_partial_body_gets_408_then_close(tight: Served) -> None:
    reader, writer = await opened(tight.path)
    writer.write(b"POST /v1/echo HTTP/1.1\r\nHost: edged\r\nContent-Length: 100\r\n\r\n{\"te")
    resp = parse(await asyncio.wait_for(reader.readuntil(b"}}"), 30))
    assert_envelope(resp, 408, "request_timeout")
    assert "daemon.read_timeout" in resp.json()["error"]["message"]
    writer.close()


async def test_an_idle_connection_is_closed(tight: Served) -> None:
    reader, writer = await opened(tight.path)
    assert await until_closed(reader) == b""
    writer.close()
    # and one that was used: idle after its answer, closed the same way
    reader, writer = await opened(tight.path)
    writer.write(b"GET /whoami HTTP/1.1\r\nHost: edged\r\n\r\n")
    data = await until_closed(reader)
    assert parse(data).status == 200
    writer.close()


async def test_at_the_bound_the_oldest_idle_connection_makes_room(tight: Served) -> None:
    idle = [await opened(tight.path) for _ in range(LIMITS.max_connections)]
    status, _, _ = await tight.call("GET", "/whoami")  # a fifth: the API keeps serving
    assert status == 200
    assert await asyncio.wait_for(idle[0][0].read(), 30) == b""  # the oldest went
    for _, writer in idle:
        writer.close()


async def test_at_the_bound_with_none_idle_a_new_one_gets_503(tight: Served) -> None:
    busy = []
    for _ in range(LIMITS.max_connections):
        reader, writer = await opened(tight.path)
        writer.write(b"GET /v1/slow HTTP/1.1\r\nHost: edged\r\n\r\n")
        busy.append((reader, writer))
    for _ in busy:
        await tight.release.arrivals.get()
    reader, writer = await opened(tight.path)
    assert_envelope(parse(await until_closed(reader)), 503, "too_many_connections")
    writer.close()
    tight.release.go.set()
    for reader, writer in busy:
        assert parse(await asyncio.wait_for(reader.readuntil(b"}"), 30)).status == 200
        writer.close()


def exchange(path: Path, data: bytes) -> RawResponse:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return parse(b"".join(chunks))


@pytest.mark.parametrize(("raw", "status", "code"), [
    (b"GET /whoami HTTP/2.0\r\nHost: edged\r\n\r\n", 505, "http_version_not_supported"),
    (b"GET /whoami HTTP/1.2\r\nHost: edged\r\n\r\n", 505, "http_version_not_supported"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: edged\r\n\r\n", 400, "bad_http"),
    (b"GET /whoami HTTP/1.1\r\nHost: edged\r\n" + b"".join(
        f"X-H{i}: v\r\n".encode() for i in range(200)) + b"\r\n", 400, "bad_http"),
    (b"POST /v1/echo HTTP/1.1\r\nHost: edged\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
     400, "bad_http"),
    (b"POST /v1/echo HTTP/1.1\r\nHost: edged\r\nContent-Length: 2\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_http"),
    (b"GET /whoami HTTP/1.1\r\n\r\n", 400, "bad_http"),
    (b"GET /whoami HTTP/1.1\r\nHost: edged\r\nX-Request-Id: a\x01b\r\n\r\n", 400, "bad_http"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "bad_http"),
])
async def test_protocol_errors_are_in_the_envelope(
        served: Served, raw: bytes, status: int, code: str,
        caplog: pytest.LogCaptureFixture) -> None:
    resp = await asyncio.to_thread(exchange, served.path, raw)
    assert_envelope(resp, status, code)
    assert len(resp.body) < 1000
    assert "Traceback" not in caplog.text
    status, _, _ = await served.call("GET", "/whoami")
    assert status == 200


@pytest.mark.parametrize("encoding", [b"br", b"zstd", b"x-unknown"])
async def test_unreadable_encodings_are_in_the_envelope(served: Served, encoding: bytes) -> None:
    raw = (b"POST /v1/echo HTTP/1.1\r\nHost: edged\r\nContent-Type: application/json\r\n"
           b"Connection: close\r\nContent-Encoding: " + encoding +
           b"\r\nContent-Length: 4\r\n\r\nabcd")
    resp = await asyncio.to_thread(exchange, served.path, raw)
    assert resp.status in (400, 415), resp
    assert resp.headers["content-type"].startswith("application/json"), resp


def test_the_daemon_takes_its_limits_from_config(
        edged: Callable[..., RunningDaemon]) -> None:
    d = edged({"audit": {"enabled": False},
               "daemon": {"read_timeout": "0.3s", "idle_timeout": "0.5s",
                          "max_connections": 4}})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.settimeout(30)
        slow.connect(str(d.socket))
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: ed")
        data = b""
        while chunk := slow.recv(65536):
            data += chunk
    assert_envelope(parse(data), 408, "request_timeout")
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
    for s in idle:
        s.connect(str(d.socket))
    assert d.client.get("/health")["status"] == "ok"  # past the bound, still served
    for s in idle:
        s.settimeout(30)
        assert s.recv(10) == b""  # shed to make room, or closed when idle
        s.close()
