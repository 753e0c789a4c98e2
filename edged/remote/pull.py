"""Pulling bundles from the cloud: ``GET {sync.endpoint}/v1/devices/{id}/config``.

Conditional requests: the ETag of the last answer goes back as If-None-Match, so an
unchanged config costs one small round trip (304). 404 or 204 mean "no config for you".
A bundle this box has already seen (same or older version) is ignored quietly: the cloud
keeps serving the newest bundle, and a rolled-back one must not be re-reported every time.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from edged.config import Config
from edged.errors import EdgedError, PayloadTooLarge, Unavailable

log = logging.getLogger(__name__)

Apply = Callable[[bytes, bool], Awaitable[dict[str, Any]]]
IsStale = Callable[[bytes], Awaitable[bool]]


class ConfigPuller:
    def __init__(self, config: Callable[[], Config], apply: Apply, is_stale: IsStale) -> None:
        self._config = config  # the running config: endpoint and interval follow reloads
        self._apply = apply
        self._is_stale = is_stale
        self._etag: str | None = None
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """Pull every remote.pull_interval, the first one an interval after start (an
        admin pulls at once with POST /admin/config/pull)."""
        while True:
            await asyncio.sleep(self._config().remote.pull_interval)
            if self._config().sync.endpoint is None:
                continue
            try:
                await self.pull()
            except EdgedError as e:
                log.warning("config pull: %s", e.message)

    async def pull(self, wait: bool = False) -> dict[str, Any]:
        async with self._lock:
            cfg = self._config()
            if cfg.sync.endpoint is None:
                return {"status": "no_endpoint"}
            status, etag, body = await self._fetch(cfg)
            if status in (204, 404):
                return {"status": "none"}
            if status == 304:
                return {"status": "not_modified"}
            if await self._is_stale(body):
                self._etag = etag
                return {"status": "up_to_date"}
            try:
                result = await self._apply(body, wait)
            except EdgedError as e:
                if e.code != "apply_in_progress":  # busy: fetch it again next time
                    self._etag = etag
                raise
            self._etag = etag
            return {"status": "applied", **result}

    async def _fetch(self, cfg: Config) -> tuple[int, str | None, bytes]:
        url = f"{cfg.sync.endpoint}/v1/devices/{quote(cfg.daemon.device_id, safe='')}/config"
        headers = await asyncio.to_thread(_headers, cfg, self._etag)
        # Same trust as sync: system CAs or sync.ca_file; loading them reads files.
        tls = await asyncio.to_thread(ssl.create_default_context, cafile=cfg.sync.ca_file)
        timeout = aiohttp.ClientTimeout(total=cfg.sync.request_timeout,
                                        connect=cfg.sync.connect_timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout,
                                             connector=aiohttp.TCPConnector(ssl=tls)) as session, \
                    session.get(url, headers=headers) as resp:
                if resp.status in (204, 304, 404):
                    return resp.status, None, b""
                if resp.status != 200:
                    raise Unavailable(f"GET {url}: HTTP {resp.status}", code="pull_failed")
                body = await _read_limited(resp, cfg.remote.max_bundle_bytes)
                return 200, resp.headers.get("ETag"), body
        except (aiohttp.ClientError, TimeoutError) as e:
            raise Unavailable(f"GET {url}: {e!r}", code="pull_failed") from None


def _headers(cfg: Config, etag: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "X-Edged-Device": cfg.daemon.device_id}
    if etag is not None:
        headers["If-None-Match"] = etag
    # The device token sync uses, read each time so a rotated token applies at once.
    token_file = cfg.sync.token_file or cfg.daemon.keys_dir / "device-token"
    try:
        token = token_file.read_text().strip()
    except FileNotFoundError:
        token = ""
    except OSError as e:
        log.warning("device token %s: %s", token_file, e.strerror)
        token = ""
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"pulled bundle is larger than remote.max_bundle_bytes "
                                  f"({limit})", code="bundle_too_large")
    return bytes(body)
