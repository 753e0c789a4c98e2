"""The uploader: drains the outbox to the cloud in ordered batches.

Rows are deleted only after the cloud acknowledges them, so a crash, a lost ack or a kill -9
at any point means the row is sent again with the same key, never lost. Between failed
attempts it waits with exponential backoff and full jitter; the wait is an event wait, so a
new row or ``sync now`` wakes it at once.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from edged.audit.sink import AuditSink
from edged.sync.cloud import Cloud, SyncFailed
from edged.sync.config import SyncConfig
from edged.sync.contract import ORDER, BadAck, acknowledged, encode_batch
from edged.sync.outbox import Outbox, Row
from edged.sync.queue import EVENT, METRICS, TICKET

log = logging.getLogger(__name__)

LAG_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400, 30 * 86400)


@dataclass
class Drain:
    """What one drain sent, per class, and why it stopped early (if it did)."""

    sent: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    retry_after: float | None = None  # what the cloud asked for (429/503 Retry-After)

    def count(self, kind: str, n: int) -> None:
        if n:
            self.sent[kind] = self.sent.get(kind, 0) + n


@dataclass
class SyncState:
    last_attempt: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    next_attempt: float | None = None
    retry_after: float | None = None
    failures: int = 0
    delivered: dict[str, int] = field(default_factory=dict)


def backoff(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform over [0, min(cap, base * 2^(failures-1))]."""
    ceiling = min(cap, base * 2 ** min(failures - 1, 62))
    return rng.uniform(0, ceiling)


class Uploader:
    def __init__(self, cfg: SyncConfig, outbox: Outbox, cloud: Cloud | None, *,
                 device_id: str, registry: CollectorRegistry, audit: AuditSink | None,
                 rng: random.Random | None = None) -> None:
        self._cfg = cfg
        self._outbox = outbox
        self._cloud = cloud
        self._device_id = device_id
        self._audit = audit
        self._rng = rng or random.Random()
        self._lock = asyncio.Lock()
        self.state = SyncState()
        self.lag = Histogram("edged_sync_delivery_lag_seconds",
                             "Time from queueing to the cloud's acknowledgement, by class",
                             ["kind"], buckets=LAG_BUCKETS, registry=registry)

    def successor(self, cfg: SyncConfig, cloud: Cloud | None) -> Uploader:
        """The uploader for a reloaded ``[sync]``: new settings and cloud; the same outbox,
        lag histogram (a registry takes a name once), state (delivered counts, failures)
        and drain lock, so an old drain still in flight and a new one never send the same
        rows at once."""
        new = copy.copy(self)
        new._cfg, new._cloud = cfg, cloud
        return new

    @property
    def lock(self) -> asyncio.Lock:
        """Held while a drain is sending or acknowledging rows."""
        return self._lock

    async def run(self) -> None:
        while True:
            self._outbox.pending.clear()
            self._outbox.urgent = False
            await self._outbox.refresh()
            if self._cloud is not None:
                await self._record(await self.drain())
            await self._wait(self.plan_next_attempt())

    def plan_next_attempt(self) -> float | None:
        """Seconds until the next attempt (None: when a row comes); sets ``next_attempt``."""
        if self._cloud is None or self.state.failures == 0:
            self.state.next_attempt = None
            return None
        delay = backoff(self.state.failures, self._cfg.backoff_base, self._cfg.backoff_cap,
                        self._rng)
        if self.state.retry_after is not None:
            # The cloud said when: not sooner, but never past our own cap.
            delay = max(delay, min(self.state.retry_after, self._cfg.backoff_cap))
        self.state.next_attempt = time.time() + delay
        return delay

    async def _wait(self, delay: float | None) -> None:
        """Until the delay is over or a row worth it comes: any row when all is well; in a
        backoff only a ticket, an event or ``sync now``, so rollups and checkpoints on a
        fleet of offline boxes do not hammer the cloud the moment it returns."""
        loop = asyncio.get_running_loop()
        deadline = None if delay is None else loop.time() + delay
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    await self._outbox.pending.wait()
                    if self.state.failures == 0 or self._outbox.urgent:
                        return
                    self._outbox.pending.clear()
        except TimeoutError:
            pass

    async def sync_now(self) -> dict[str, Any]:
        """Try at once (``edged sync now``, POST /admin/sync); report what was sent. With no
        endpoint there is nothing to try: ``"status": "no_endpoint"``, as a config pull says,
        and what waits in the outbox."""
        if self._cloud is None:
            usage = await self._outbox.refresh()
            return {"status": "no_endpoint", "sent": {}, "error": None,
                    "queued": dict(usage.rows)}
        result = await self.drain()
        await self._record(result)
        usage = await self._outbox.refresh()
        if result.error is None:
            self._outbox.pending.set()  # failures is 0 now: the loop wakes and re-plans
        return {"status": "sent" if result.error is None else "failed", "sent": result.sent,
                "error": result.error, "queued": dict(usage.rows)}

    async def drain(self) -> Drain:
        """Send every queued row, class by class in ``ORDER``, oldest first; stop at the
        first failure (the cloud is likely down for the others too)."""
        result = Drain()
        async with self._lock:
            self.state.last_attempt = time.time()
            try:
                for kind in ORDER:
                    if not await self._drain_kind(kind, result):
                        break
            except SyncFailed as e:
                result.error, result.retry_after = str(e), e.retry_after
        return result

    async def _drain_kind(self, kind: str, result: Drain) -> bool:
        while rows := await self._outbox.batch(kind, self._cfg.batch_rows,
                                               self._cfg.batch_bytes):
            acked, dropped = await self._send(kind, rows)
            await self._outbox.acknowledge(acked + dropped)
            self._observe_lag(kind, acked)
            result.count(kind, len(acked))
            if len(acked) + len(dropped) < len(rows):
                # The rest stay queued; sending them again now would only loop.
                result.error = (f"{kind}: the cloud acknowledged {len(acked)} of {len(rows)} "
                                "rows; the rest stay queued")
                return False
        return True

    async def _send(self, kind: str, rows: list[Row]) -> tuple[list[Row], list[Row]]:
        """The rows the cloud acknowledged, and the rollups it refused for good."""
        assert self._cloud is not None
        request = await asyncio.to_thread(encode_batch, kind, rows, self._device_id)
        try:
            body = await self._cloud.post(request)
        except SyncFailed as e:
            if kind == METRICS and _permanent(e.status):
                # OTLP: a 4xx other than 408/429 must not be retried; rollups may be dropped.
                self._outbox.metrics.dropped.labels(METRICS).inc(len(rows))
                log.warning("the cloud refused %d metric rollups for good: %s", len(rows), e)
                return [], rows
            raise
        try:
            return acknowledged(kind, rows, body), []
        except BadAck as e:
            raise SyncFailed(str(e)) from None

    def _observe_lag(self, kind: str, rows: list[Row]) -> None:
        now = time.time()
        for row in rows:
            self.lag.labels(kind).observe(max(0.0, now - row.created))

    async def _record(self, result: Drain) -> None:
        state, now = self.state, time.time()
        for kind, n in result.sent.items():
            state.delivered[kind] = state.delivered.get(kind, 0) + n
        if result.error is None:
            if state.failures:
                await self._audit_event("sync.restored", {"after_failures": state.failures})
            state.failures, state.last_success = 0, now
        else:
            if state.failures == 0:
                await self._audit_event("sync.failing", {"error": result.error})
            state.failures += 1
            state.last_error, state.last_error_at = result.error, now
            state.retry_after = result.retry_after
            log.warning("sync failed (%d in a row): %s", state.failures, result.error)
        # Not for checkpoints alone: auditing their delivery would make records that make
        # checkpoints that get delivered, for ever when audit.checkpoint_every is small.
        if any(k in (TICKET, EVENT) for k in result.sent):
            await self._audit_event("sync.delivered", {"sent": result.sent})

    async def _audit_event(self, kind: str, data: Mapping[str, Any]) -> None:
        if self._audit is None:
            return
        try:
            await self._audit.append(kind, "daemon", data)
        except Exception:
            # The audit log reports its own failures; sync must go on regardless.
            log.exception("cannot audit %s", kind)

    def status(self) -> dict[str, Any]:
        s, usage, now = self.state, self._outbox.usage, time.time()
        return {
            "endpoint": self._cloud.endpoint if self._cloud else None,
            "queued": {k: usage.rows.get(k, 0) for k in ORDER},
            "queued_bytes": usage.total_bytes,
            "max_bytes": self._outbox.max_bytes,
            "oldest_age_s": {k: round(now - t, 1) for k, t in usage.oldest.items()},
            "delivered": dict(s.delivered),
            "last_attempt": s.last_attempt,
            "last_success": s.last_success,
            "last_error": s.last_error,
            "last_error_at": s.last_error_at,
            "next_attempt": s.next_attempt,
            "failures": s.failures,
        }


def _permanent(status: int | None) -> bool:
    return status is not None and 400 <= status < 500 and status not in (408, 429)
