"""The sync component: the uploader, the rollups and the outbox-full alerts, with their
health, status line and admin route. The daemon builds one and runs ``run()``.

A pushed ``[sync]`` reloads in place: the new cloud session is opened first (a config it
cannot use, such as an unreadable ``ca_file``, is refused before anything changes), then
``run()`` stops the uploader and rollups of the old config, closes the old session and starts
the new ones. The rows stay in the outbox throughout: a batch cut short by the swap was not
acknowledged, so it stays queued and the new uploader sends it again under the same keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from edged.audit.sink import AuditSink
from edged.config import Config
from edged.sync.cloud import Cloud
from edged.sync.config import SyncConfig
from edged.sync.outbox import Notice, Outbox
from edged.sync.uploader import Uploader

if TYPE_CHECKING:
    from edged.sync.rollup import Rollups

log = logging.getLogger(__name__)

ALERT_EVERY = 60.0
ALERT_ROWS = 20  # refused rows named in one alert; the rest are counted


@dataclass(frozen=True)
class _Parts:
    """What one ``[sync]`` config runs."""

    cfg: SyncConfig
    cloud: Cloud | None
    uploader: Uploader
    rollups: Rollups | None


@dataclass(frozen=True)
class _Swap:
    """A reload handed to ``run()``: the new parts, and the future it resolves once they run."""

    parts: _Parts
    done: asyncio.Future[None]


class SyncService:
    def __init__(self, cfg: SyncConfig, outbox: Outbox, *, device_id: str, keys_dir: Path,
                 registry: CollectorRegistry, audit: AuditSink | None) -> None:
        self.outbox = outbox
        self._audit = audit
        self._device_id = device_id
        self._keys_dir = keys_dir
        self._registry = registry
        self._start_ns = time.time_ns()  # rollups are cumulative from here, across reloads
        self._parts = self._build(cfg, None)
        self._swaps: asyncio.Queue[_Swap] = asyncio.Queue()
        self._reloading = asyncio.Lock()
        self._running = False

    def _build(self, cfg: SyncConfig, previous: _Parts | None) -> _Parts:
        token_file = cfg.token_file or self._keys_dir / "device-token"
        cloud = None if cfg.endpoint is None else Cloud(
            cfg.endpoint, device_id=self._device_id, token_file=token_file,
            ca_file=cfg.ca_file, connect_timeout=cfg.connect_timeout,
            request_timeout=cfg.request_timeout)
        uploader = (previous.uploader.successor(cfg, cloud) if previous is not None else
                    Uploader(cfg, self.outbox, cloud, device_id=self._device_id,
                             registry=self._registry, audit=self._audit))
        rollups: Rollups | None = None
        # Without an endpoint nobody would ever read rollups: do not fill the disk with them,
        # nor memory with opentelemetry-proto (about 5 MiB, imported only here).
        if cfg.endpoint and cfg.rollup_interval > 0:
            from edged.sync.rollup import Rollups
            rollups = Rollups(cfg.rollup_interval, self._registry, self.outbox,
                              device_id=self._device_id, start_ns=self._start_ns)
        return _Parts(cfg, cloud, uploader, rollups)

    @property
    def uploader(self) -> Uploader:
        return self._parts.uploader

    @property
    def rollups(self) -> Rollups | None:
        return self._parts.rollups

    async def __aenter__(self) -> SyncService:
        await self.outbox.recount()
        if self._parts.cloud is not None:
            await self._parts.cloud.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.rollups is not None and exc is None:
            # The counters since the last rollup would die with the process: queue them.
            try:
                await self.rollups.queue_one()
            except Exception:
                log.exception("cannot queue the last metrics rollup")
        if self._parts.cloud is not None:
            await self._parts.cloud.__aexit__(exc_type, exc, tb)

    # -- running, and swapping on a reload

    async def run(self) -> None:
        """The one long-lived task: the alerts, and the current parts until a reload swaps
        them."""
        self._running = True
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._alerts(), name="sync-alerts")
                while True:
                    swap = await self._run_parts(self._parts)
                    await self._swap_in(swap)
        finally:
            self._running = False
            while not self._swaps.empty():  # a reload that came too late: it did not apply
                late = self._swaps.get_nowait()
                await self._close(late.parts)
                if not late.done.done():
                    late.done.set_exception(RuntimeError("sync is stopping"))

    async def _run_parts(self, parts: _Parts) -> _Swap:
        """Run the uploader and rollups of one config until a reload comes; then stop them
        (a batch cut short was not acknowledged: its rows stay queued)."""
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(parts.uploader.run(), name="sync-uploader")]
            if parts.rollups is not None:
                tasks.append(tg.create_task(parts.rollups.run(), name="sync-rollups"))
            swap = await self._swaps.get()
            for task in tasks:
                task.cancel()
        return swap

    async def _swap_in(self, swap: _Swap) -> None:
        try:
            await self._replace(swap.parts)
        finally:
            if not swap.done.done():
                swap.done.set_result(None)

    async def reload(self, config: Config) -> None:
        """Take a new ``[sync]`` in place; raise (refuse) if it cannot be used."""
        cfg = config.sync
        async with self._reloading:
            if cfg == self._parts.cfg:
                return
            new = self._build(cfg, self._parts)
            if new.cloud is not None:
                await new.cloud.__aenter__()  # loads ca_file: a bad one refuses the push here
            if not self._running:
                await self._replace(new)
                return
            swap = _Swap(new, asyncio.get_running_loop().create_future())
            await self._swaps.put(swap)
            await swap.done
        log.info("sync reloaded: endpoint %s", cfg.endpoint or "not set (queueing only)")

    async def _replace(self, new: _Parts) -> None:
        old, self._parts = self._parts, new
        self._bound(new.cfg.max_bytes, new.cfg.reserved_bytes)
        await self._retire(old)

    def _bound(self, max_bytes: int, reserved_bytes: int) -> None:
        if max_bytes > self.outbox.max_bytes:
            # Room was made, as an ack makes it: the next row that does not fit says so again.
            self.outbox.refusing = False
        self.outbox.max_bytes = max_bytes
        self.outbox.reserved_bytes = reserved_bytes

    async def _retire(self, old: _Parts) -> None:
        """Close the old session once a drain still using it (``sync now`` in flight) is
        over; a request cannot outlast its own timeout, so neither does the wait."""
        try:
            async with asyncio.timeout(old.cfg.request_timeout + old.cfg.connect_timeout):
                async with old.uploader.lock:
                    pass
        except TimeoutError:
            log.warning("closing the old sync session under a drain that is still running")
        await self._close(old)

    @staticmethod
    async def _close(parts: _Parts) -> None:
        if parts.cloud is not None:
            await parts.cloud.__aexit__(None, None, None)

    async def _alerts(self) -> None:
        """Audit what the bound cost: refused rows, and rows dropped to make room; what
        piles up meanwhile goes into one event."""
        while True:
            notices = [await self.outbox.notices.get()]
            while not self.outbox.notices.empty():
                notices.append(self.outbox.notices.get_nowait())
            if self._audit is None:
                continue
            try:
                await self._audit.append("sync.outbox_full", "daemon", self._alert(notices))
            except Exception:
                log.exception("cannot audit the outbox-full alert")
            # At most one alert per interval: an alert is an audit record, whose checkpoint
            # the full outbox may refuse in turn, which would make another alert.
            await asyncio.sleep(ALERT_EVERY)

    def _alert(self, notices: list[Notice]) -> dict[str, Any]:
        refused = [n for n in notices if n.action == "refused"]
        dropped: dict[str, dict[str, int]] = {}
        for n in notices:
            if n.action == "dropped":
                tally = dropped.setdefault(n.kind, {"rows": 0, "bytes": 0})
                tally["rows"] += n.rows
                tally["bytes"] += n.bytes
        return {"refused": [{"kind": n.kind, "key": n.key, "bytes": n.bytes}
                            for n in refused[:ALERT_ROWS]],
                "refused_rows": len(refused), "dropped": dropped,
                "max_bytes": self.outbox.max_bytes,
                "reserved_bytes": self.outbox.reserved_bytes}

    def health(self) -> dict[str, Any]:
        status = self.uploader.status()
        status["degraded"] = self.outbox.refusing
        if status["degraded"]:
            status["message"] = (
                "the outbox is full: new tickets and checkpoints are refused until the cloud "
                "takes some (see `edged sync status`)" if self._parts.cloud is not None else
                "the outbox is full and sync.endpoint is not set, so nothing will drain it: "
                "set an endpoint or raise sync.max_bytes")
        return status

    def status_line(self) -> str:
        queued = sum(self.outbox.usage.rows.values())
        state = "offline" if self.uploader.state.failures else "ok"
        if self._parts.cloud is None:
            state = "no endpoint"
        return f"sync {state}, {queued} queued"

