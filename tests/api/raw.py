"""Raw HTTP over the Unix socket: bytes no well-behaved client would send."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(path: Path, data: bytes, *, timeout: float = 30.0) -> bytes:
    """Send ``data`` and read until the daemon closes (or ``timeout``). No half-close:
    aiohttp takes the end of input for a client that left."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def parse(raw: bytes) -> RawResponse:
    """The first response in ``raw`` (status line, headers, body; chunked bodies joined)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    _, status, reason = [*lines[0].split(" ", 2), ""][:3]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2:]
    else:
        length = int(headers.get("content-length", len(rest)))
        body = rest[:length]
    return RawResponse(int(status), reason, headers, body)


def request(path: Path, method: str, target: str, *, body: bytes = b"",
            headers: dict[str, bytes] | None = None, timeout: float = 30.0) -> RawResponse:
    """One HTTP/1.1 request with ``Connection: close``; header values are sent as bytes."""
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: edged", b"Connection: close"]
    all_headers = {"Content-Type": b"application/json", **(headers or {})}
    if body or method == "POST":
        all_headers["Content-Length"] = str(len(body)).encode()
    lines += [name.encode() + b": " + value for name, value in all_headers.items()]
    return parse(exchange(path, b"\r\n".join(lines) + b"\r\n\r\n" + body, timeout=timeout))
