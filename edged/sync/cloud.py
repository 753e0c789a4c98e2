"""The HTTP side of sync: one aiohttp session to ``sync.endpoint``.

TLS is verified by default (the system CAs, or ``sync.ca_file``); the bearer device token
is read from its file on every request so a rotated token applies at once; connect and
whole-request timeouts bound every attempt.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from types import TracebackType

import aiohttp

from edged.errors import ConfigError
from edged.sync.contract import Request

log = logging.getLogger(__name__)


class SyncFailed(Exception):
    """An attempt did not get an acknowledgement; the rows stay queued."""

    def __init__(self, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Cloud:
    def __init__(self, endpoint: str, *, device_id: str, token_file: Path,
                 ca_file: Path | None, connect_timeout: float, request_timeout: float) -> None:
        self.endpoint = endpoint
        self._device_id = device_id
        self._token_file = token_file
        self._ca_file = ca_file
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=connect_timeout,
                                              connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Cloud:
        # Loading CA certificates reads files: off the loop.
        try:
            context = await asyncio.to_thread(ssl.create_default_context, cafile=self._ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"sync.ca_file: cannot load {self._ca_file} as PEM CA "
                              f"certificates: {getattr(e, 'strerror', None) or e}") from None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=2), timeout=self._timeout,
            headers={"User-Agent": "edged", "X-Edged-Device": self._device_id})
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, request: Request) -> bytes:
        """POST one batch; the response body on 2xx, ``SyncFailed`` otherwise."""
        if self._session is None:
            # Closed by a reload under a drain that outlived the wait: the rows stay queued
            # and the new session sends them.
            raise SyncFailed(f"{request.path}: the session to {self.endpoint} is closed")
        url = self.endpoint + request.path
        headers = {"Content-Type": request.content_type, "Content-Encoding": "gzip"}
        token = await asyncio.to_thread(self._token)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._session.post(url, data=request.body, headers=headers) as resp:
                body = await resp.read()
                if resp.status // 100 != 2:
                    text = body[:200].decode(errors="replace")
                    raise SyncFailed(f"{request.path}: HTTP {resp.status}: {text}", resp.status,
                                     _retry_after(resp.headers.get("Retry-After")))
                return body
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise SyncFailed(f"{request.path}: {_describe(e)}") from None

    def _token(self) -> str | None:
        try:
            return self._token_file.read_text().strip() or None
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cannot read the device token %s: %s", self._token_file, e.strerror)
            return None


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; the HTTP-date form is ignored (backoff applies)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
