"""Raw requests for the fuzz tests: bytes in, at most one response out."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from tests.api.raw import RawResponse, parse

READ_LIMIT = 4 * 1024 * 1024


def _complete(data: bytes) -> bool:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        return rest.endswith(b"0\r\n\r\n")
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(rest) >= int(line.split(b":", 1)[1])
    return False  # no length: the body ends when the daemon closes


def send(path: Path, data: bytes, timeout: float = 60.0) -> RawResponse | None:
    """Send ``data``; the first response, or None when the daemon closed without one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        # refused before it read it all: what it answered is still there to read
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        got = b""
        while not _complete(got) and len(got) < READ_LIMIT:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    return parse(got) if got.startswith(b"HTTP/") else None


def http(method: str, target: str, body: bytes = b"",
         headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: edged"]
    lines += [k + b": " + v for k, v in headers or []]
    if body or method == "POST":
        lines.append(b"Content-Type: application/json")
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
