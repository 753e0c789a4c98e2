"""The sync component: the uploader, the rollups and the outbox-full alerts, with their
health, status line and admin route. The daemon builds one and runs ``run()``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from edged.audit.sink import AuditSink
from edged.sync.cloud import Cloud
from edged.sync.config import SyncConfig
from edged.sync.outbox import Outbox
from edged.sync.uploader import Uploader

if TYPE_CHECKING:
    from edged.sync.rollup import Rollups

log = logging.getLogger(__name__)

ALERT_EVERY = 60.0


class SyncService:
    def __init__(self, cfg: SyncConfig, outbox: Outbox, *, device_id: str, keys_dir: Path,
                 registry: CollectorRegistry, audit: AuditSink | None) -> None:
        self.outbox = outbox
        self._audit = audit
        token_file = cfg.token_file or keys_dir / "device-token"
        self._cloud = None if cfg.endpoint is None else Cloud(
            cfg.endpoint, device_id=device_id, token_file=token_file,
            ca_file=cfg.ca_file, connect_timeout=cfg.connect_timeout,
            request_timeout=cfg.request_timeout)
        self.uploader = Uploader(cfg, outbox, self._cloud, device_id=device_id,
                                 registry=registry, audit=audit)
        self.rollups: Rollups | None = None
        # Without an endpoint nobody would ever read rollups: do not fill the disk with them,
        # nor memory with opentelemetry-proto (about 5 MiB, imported only here).
        if cfg.endpoint and cfg.rollup_interval > 0:
            from edged.sync.rollup import Rollups
            self.rollups = Rollups(cfg.rollup_interval, registry, outbox, device_id=device_id)

    async def __aenter__(self) -> SyncService:
        await self.outbox.recount()
        if self._cloud is not None:
            await self._cloud.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.rollups is not None and exc is None:
            # The counters since the last rollup would die with the process: queue them.
            try:
                await self.rollups.queue_one()
            except Exception:
                log.exception("cannot queue the last metrics rollup")
        if self._cloud is not None:
            await self._cloud.__aexit__(exc_type, exc, tb)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.uploader.run(), name="sync-uploader")
            if self.rollups is not None:
                tg.create_task(self.rollups.run(), name="sync-rollups")
            tg.create_task(self._alerts(), name="sync-alerts")

    async def _alerts(self) -> None:
        """Audit refused rows; refusals that pile up meanwhile go into one event."""
        while True:
            refused = [await self.outbox.refusals.get()]
            while not self.outbox.refusals.empty():
                refused.append(self.outbox.refusals.get_nowait())
            if self._audit is None:
                continue
            data = {"refused": [{"kind": k, "key": key, "bytes": n} for k, key, n in refused],
                    "max_bytes": self.outbox.max_bytes}
            try:
                await self._audit.append("sync.outbox_full", "daemon", data)
            except Exception:
                log.exception("cannot audit the outbox-full alert")
            # At most one alert per interval: an alert is an audit record, whose checkpoint
            # the full outbox may refuse in turn, which would make another alert.
            await asyncio.sleep(ALERT_EVERY)

    def health(self) -> dict[str, Any]:
        status = self.uploader.status()
        status["degraded"] = self.outbox.refusing
        if status["degraded"]:
            status["message"] = (
                "the outbox is full: new tickets and checkpoints are refused until the cloud "
                "takes some (see `edged sync status`)" if self._cloud is not None else
                "the outbox is full and sync.endpoint is not set, so nothing will drain it: "
                "set an endpoint or raise sync.max_bytes")
        return status

    def status_line(self) -> str:
        queued = sum(self.outbox.usage.rows.values())
        state = "offline" if self.uploader.state.failures else "ok"
        if self._cloud is None:
            state = "no endpoint"
        return f"sync {state}, {queued} queued"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/admin/sync", self._sync_now)

    async def _sync_now(self, request: web.Request) -> web.Response:
        return web.json_response(await self.uploader.sync_now())
