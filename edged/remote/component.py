"""The remote-management component: the manager and the puller. Its admin routes are in
edged/remote/http.py."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from edged.audit.sink import AuditSink
from edged.config import Config
from edged.models.contract import Inference
from edged.remote.bundle import FleetKeys
from edged.remote.history import SCHEMA, History
from edged.remote.manager import RemoteManager
from edged.remote.pull import ConfigPuller
from edged.remote.reload import ReloadTarget
from edged.remote.versions import config_dir
from edged.roles import HealthSource
from edged.store import Schema, Store
from edged.sync.queue import OutboxQueue


class RemoteComponent:
    schema: Schema = SCHEMA

    def __init__(self, config: Config, store: Store, *, targets: Sequence[ReloadTarget],
                 health: Mapping[str, HealthSource], audit: AuditSink | None = None,
                 outbox: OutboxQueue | None = None, inference: Inference | None = None,
                 ) -> None:
        self.store = store
        history = History(store, config.daemon.device_id, audit=audit, outbox=outbox)
        self.manager = RemoteManager(
            config, versions=config_dir(config), keys=FleetKeys(config.daemon.keys_dir / "fleet"),
            history=history, targets=targets, health=health, inference=inference)
        self.puller = ConfigPuller(lambda: self.manager.config, self._apply_pulled,
                                   self.manager.is_stale)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.manager.run(), name="remote-manager")
            tg.create_task(self.puller.run(), name="remote-pull")

    def health(self) -> dict[str, Any]:
        return self.manager.health()

    async def _apply_pulled(self, raw: bytes, wait: bool) -> dict[str, Any]:
        return await self.manager.apply(raw, source="pull", actor="cloud", wait=wait)
