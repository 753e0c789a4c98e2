"""A small synchronous client for the daemon's Unix socket, used by the CLI.

stdlib only, so ``edged status`` starts fast.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edged.errors import EdgedError


class DaemonUnreachable(EdgedError):
    code = "unreachable"
    status = 503


class ApiError(EdgedError):
    """An error envelope returned by the daemon."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("edged", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(self, socket_path: Path, timeout: float = 300.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    @contextmanager
    def _open(self, method: str, path: str, body: Any) -> Iterator[http.client.HTTPResponse]:
        """One connection per request, closed once the caller has read the response."""
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            yield self._send(conn, method, path, body)
        finally:
            conn.close()

    def _send(self, conn: _UnixConnection, method: str, path: str,
              body: Any) -> http.client.HTTPResponse:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, path, body=payload, headers=headers)
            return conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise DaemonUnreachable(
                f"no edged daemon answers on {self.socket_path} ({e.strerror}); start one with "
                "`edged serve` (or `scripts/run`), or point at another with --socket / "
                "EDGED_SOCKET") from None
        except PermissionError:
            raise DaemonUnreachable(
                f"permission denied on {self.socket_path}: your user must be in the daemon's "
                "client group") from None
        except TimeoutError:
            raise DaemonUnreachable(
                f"edged on {self.socket_path} did not answer within {self.timeout:.0f}s") from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise DaemonUnreachable(
                f"edged on {self.socket_path} dropped the connection ({e}); is it stopping?"
            ) from None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as resp:
            raw = resp.read()
            ctype = resp.getheader("Content-Type", "")
            status = resp.status
        return _decode(status, ctype, raw)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def stream(self, path: str, body: Any) -> Iterator[Any]:
        """POST and yield each SSE ``data:`` event as JSON, until ``[DONE]``."""
        with self._open("POST", path, body) as resp:
            if resp.status >= 400:
                _decode(resp.status, resp.getheader("Content-Type", ""), resp.read())
            for line in resp:
                text = line.decode().strip()
                if not text.startswith("data:"):
                    continue
                payload = text[5:].strip()
                if payload == "[DONE]":
                    return
                yield json.loads(payload)


def _decode(status: int, ctype: str, raw: bytes) -> Any:
    """The body as JSON (or text); an error envelope becomes an ``ApiError``."""
    data: Any = json.loads(raw) if "json" in ctype and raw else raw.decode(errors="replace")
    if status >= 400:
        err = data.get("error", {}) if isinstance(data, dict) else {}
        raise ApiError(status, err.get("code", "http_error"),
                       err.get("message", f"HTTP {status}"))
    return data
