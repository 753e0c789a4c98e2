"""``AuditLog``: the daemon's ``AuditSink``. Appends are group-committed and durable.

An ``append()`` queues its event and waits. One flusher task at a time hands everything
queued to a worker thread, which numbers, encrypts and chains the events, writes them with
one write and one fdatasync, and only then are the waiters answered: many concurrent
appends share one fsync, the loop never blocks on disk, and the order of ``append()`` calls
on the loop is the order of the seqs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from edged import __version__
from edged.audit.checkpoints import Checkpoint, CheckpointFile, sign
from edged.audit.config import AuditConfig
from edged.audit.frames import MAGIC, frame_hash, seal, segment_name
from edged.audit.keys import AuditKeys, ensure_keys, kid_text, load_keys
from edged.audit.recovery import Tail, recover
from edged.durable import fsync_dir
from edged.errors import BadRequest, EdgedError, Unavailable
from edged.sync.queue import CHECKPOINT, OutboxQueue

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 1024 * 1024
T = TypeVar("T")
# Built once: json.dumps with options builds a new encoder on every call. Values JSON has no
# type for (a Path, a datetime, a Decimal from a tool) are kept as their text rather than
# failing the record.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


# What seq, time, kind and actor add around the data, with room to spare.
_ENVELOPE_BYTES = 512


def encode_event(kind: str, event: Mapping[str, Any]) -> bytes:
    """The plaintext of an event; ``BadRequest`` if it cannot be one (not JSON, not UTF-8,
    too large)."""
    try:
        raw = _JSON.encode(event).encode()
    except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
        raise BadRequest(f"audit event {kind!r}: data is not JSON text: "
                         f"{str(e)[:120]}") from None
    if len(raw) > MAX_EVENT_BYTES:
        raise BadRequest(f"audit event {kind!r} is {len(raw)} bytes, more than "
                         f"{MAX_EVENT_BYTES}")
    return raw


def check_event(kind: str, actor: str, data: Mapping[str, Any]) -> None:
    """Raise ``BadRequest`` unless ``append(kind, actor, data)`` can encode its record: what
    a caller checks before it does what the record will describe."""
    raw = encode_event(kind, {"kind": kind, "actor": actor, "data": data})
    if len(raw) + _ENVELOPE_BYTES > MAX_EVENT_BYTES:
        raise BadRequest(f"audit event {kind!r} would be more than {MAX_EVENT_BYTES} bytes")


def utc_text(when: float) -> str:
    """The event-time format (UTC, microseconds, Z); such strings sort in time order."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def utc_now() -> str:
    return utc_text(time.time())


@dataclass
class _Entry:
    kind: str
    actor: str
    data: Mapping[str, Any]
    time: float  # when append() was called; formatted on the writer thread
    done: asyncio.Future[int]


@dataclass(frozen=True)
class Tip:
    """The last durable record and where the log ends after it, replaced as one value so
    readers on other threads never see a half-updated pair."""

    path: Path
    size: int
    seq: int
    head: bytes


@dataclass
class _Position:
    """Where the writer is; touched only by the one batch in flight."""

    fd: int
    path: Path
    size: int
    seq: int
    head: bytes
    unsynced: list[bytes] = field(default_factory=list)


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.appends = Counter("edged_audit_appends", "audit records made durable",
                               registry=registry)
        self.batches = Counter("edged_audit_commits", "group commits (one fsync each)",
                               registry=registry)
        self.checkpoints = Counter("edged_audit_checkpoints", "signed checkpoints written",
                                   registry=registry)
        self.seq = Gauge("edged_audit_seq", "seq of the last durable audit record",
                         registry=registry)


class AuditLog:
    """An async context manager: entering recovers the tail and records the start; leaving
    records the stop, flushes, writes a last checkpoint and closes."""

    def __init__(self, config: AuditConfig, folder: Path, keys: AuditKeys, *, device_id: str,
                 outbox: OutboxQueue | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        if keys.device is None:
            raise ValueError("the audit log needs the device private key to sign checkpoints")
        self._config = config
        self.folder = folder
        self._keys = keys
        self._aead = keys.aead(keys.current_id)
        self._device_id = device_id
        self._outbox = outbox
        self._metrics = AuditMetrics(registry or CollectorRegistry())
        self._checkpoints = CheckpointFile(folder)
        self._pos: _Position | None = None
        self._pending: list[_Entry] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failed: str | None = None
        self._closed = False
        self._tip = Tip(folder, 0, 0, b"")
        self._checkpoint_seq = 0
        self._checkpoint_lock = asyncio.Lock()
        self._checkpoint_error: str | None = None
        self._damage: dict[str, Any] | None = None
        # The log's own thread: disk work never queues behind other components' blocking
        # calls in the shared default executor, and runs in submission order.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")

    # -- lifecycle

    async def __aenter__(self) -> AuditLog:
        try:
            tail = await self._in_writer(self._open)
            await self._record_open(tail)
        except BaseException:
            self._closed = True
            if self._pos is not None:
                os.close(self._pos.fd)
            self._writer.shutdown(wait=False)
            raise
        return self

    def _open(self) -> Tail:
        tail = recover(self.folder, self._keys)
        self._checkpoints.repair_tail()
        fd = os.open(tail.path, os.O_WRONLY | os.O_APPEND)
        self._pos = _Position(fd, tail.path, tail.size, tail.seq, tail.head)
        self._tip = Tip(tail.path, tail.size, tail.seq, tail.head)
        self._checkpoint_seq = self._last_checkpoint_seq()
        return tail

    def _last_checkpoint_seq(self) -> int:
        seqs = [cp.seq for _, cp in self._checkpoints.read() if isinstance(cp, Checkpoint)]
        return max(seqs, default=0)

    async def _record_open(self, tail: Tail) -> None:
        if tail.recovery is not None:
            await self.append("audit.recovery", "daemon", tail.recovery)
        if tail.damage is not None:
            self._damage = tail.damage
            await self.append("audit.damage_found", "daemon", tail.damage)
        if tail.key_id is not None and tail.key_id != self._keys.current_id:
            await self.append("audit.key_rotated", "daemon",
                              {"from_key": kid_text(tail.key_id),
                               "to_key": kid_text(self._keys.current_id)})
        await self.append("daemon.start", "daemon",
                          {"version": __version__, "pid": os.getpid(), "resumed_at": tail.seq})
        log.info("audit log open at seq %d in %s (key %s)", self._tip.seq, self.folder,
                 kid_text(self._keys.current_id))

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._failed is None:
                await self.append("daemon.stop", "daemon", {"pid": os.getpid()})
        finally:
            self._closed = True
            if self._flusher is not None:
                await asyncio.shield(self._flusher)
            if self._tip.seq > self._checkpoint_seq:
                await self.checkpoint()
            if self._pos is not None:
                os.close(self._pos.fd)
                self._pos = None
            self._writer.shutdown(wait=True)

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def run(self) -> None:
        """Checkpoint every ``checkpoint_interval`` when records came in since the last one."""
        while True:
            await asyncio.sleep(self._config.checkpoint_interval)
            if self._tip.seq > self._checkpoint_seq:
                await self.checkpoint()

    # -- appending

    async def append(self, kind: str, actor: str, data: Mapping[str, Any]) -> int:
        if self._failed is not None:
            raise Unavailable(f"the audit log cannot write: {self._failed}", code="audit_failed")
        if self._closed or self._pos is None:
            raise Unavailable("the audit log is closed", code="audit_closed")
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(_Entry(kind, actor, data, time.time(), done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="audit-flush")
        # A caller cancelled while it waits cancels only its wait: the record is written
        # all the same (the flusher skips answering a cancelled future).
        return await done

    async def _flush(self) -> None:
        while self._pending and self._failed is None:
            batch, self._pending = self._pending, []
            try:
                results = await self._in_writer(self._write_batch, batch)
            except OSError as e:
                self._fail(f"{e.strerror or e} ({self._pos.path if self._pos else '?'})", batch)
                return
            except Exception as e:
                # Never leave a waiter hanging, whatever went wrong.
                log.exception("audit: writing a batch failed")
                self._fail(f"internal error: {e}", batch)
                return
            for entry, result in zip(batch, results, strict=True):
                if entry.done.cancelled():
                    continue
                if isinstance(result, Exception):
                    entry.done.set_exception(result)
                else:
                    entry.done.set_result(result)
            self._metrics.seq.set(self._tip.seq)
            if self._tip.seq - self._checkpoint_seq >= self._config.checkpoint_every:
                await self.checkpoint()

    def _fail(self, reason: str, batch: list[_Entry]) -> None:
        """A write or fsync failed: what it held may or may not be on disk, so stop accepting
        (the next start recovers the tail) rather than acknowledge anything unsure."""
        self._failed = reason
        log.error("audit log write failed, refusing further appends: %s", reason)
        err = Unavailable(f"the audit log cannot write: {reason}", code="audit_failed")
        for entry in [*batch, *self._pending]:
            if not entry.done.done():
                entry.done.set_exception(err)
        self._pending = []

    def _write_batch(self, batch: list[_Entry]) -> list[int | EdgedError]:
        """Worker thread: number, seal, chain, write, fdatasync. Rolls segments as needed."""
        pos = self._pos
        assert pos is not None
        nonces = os.urandom(12 * len(batch))
        results: list[int | EdgedError] = []
        for i, entry in enumerate(batch):
            seq = pos.seq + 1
            plaintext = self._encode(seq, entry)
            if isinstance(plaintext, EdgedError):
                results.append(plaintext)
                continue
            frame = seal(self._aead, self._keys.current_id, seq, pos.head,
                         nonces[12 * i:12 * i + 12], plaintext)
            if pos.size > len(MAGIC) and pos.size + len(frame) > self._config.segment_bytes:
                self._roll(pos, seq)
            pos.unsynced.append(frame)
            pos.size += len(frame)
            pos.seq, pos.head = seq, frame_hash(frame)
            results.append(seq)
        self._sync(pos)
        self._metrics.appends.inc(sum(1 for r in results if isinstance(r, int)))
        self._metrics.batches.inc()
        self._tip = Tip(pos.path, pos.size, pos.seq, pos.head)
        return results

    @staticmethod
    def _encode(seq: int, entry: _Entry) -> bytes | EdgedError:
        event = {"seq": seq, "time": utc_text(entry.time), "kind": entry.kind,
                 "actor": entry.actor, "data": entry.data}
        try:
            return encode_event(entry.kind, event)
        except BadRequest as e:
            return e

    @staticmethod
    def _sync(pos: _Position) -> None:
        buf = memoryview(b"".join(pos.unsynced))
        pos.unsynced.clear()
        while buf:
            buf = buf[os.write(pos.fd, buf):]
        os.fdatasync(pos.fd)

    def _roll(self, pos: _Position, first_seq: int) -> None:
        """Close the full segment (durably) and start the next one, named by its first seq."""
        self._sync(pos)
        os.close(pos.fd)
        path = self.folder / segment_name(first_seq)
        pos.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        os.write(pos.fd, MAGIC)
        os.fsync(pos.fd)
        fsync_dir(self.folder)
        pos.path, pos.size = path, len(MAGIC)

    # -- checkpoints

    async def checkpoint(self) -> Checkpoint | None:
        """Sign (seq, head) of the last durable record; keep it and queue it for the cloud."""
        async with self._checkpoint_lock:
            seq, head = self._tip.seq, self._tip.head
            if seq <= self._checkpoint_seq:
                return None
            assert self._keys.device is not None
            cp = sign(self._device_id, seq, head, utc_now(), self._keys.device)
            try:
                await self._in_writer(self._checkpoints.append, cp)
            except OSError as e:
                self._checkpoint_error = f"cannot write {self._checkpoints.path}: {e.strerror}"
                log.error("audit: %s", self._checkpoint_error)
                return None
            self._checkpoint_seq = seq
            self._metrics.checkpoints.inc()
            await self._queue(cp)
            return cp

    async def _queue(self, cp: Checkpoint) -> None:
        if self._outbox is None:
            return
        try:
            await self._outbox.enqueue(CHECKPOINT, f"audit-checkpoint:{cp.device}:{cp.seq}:"
                                       f"{cp.head[:16]}", cp.as_dict())
            self._checkpoint_error = None
        except EdgedError as e:
            # Kept locally all the same; the health report says the cloud copy is missing.
            self._checkpoint_error = f"checkpoint {cp.seq} not queued: {e.message}"
            log.error("audit: %s", self._checkpoint_error)
        except Exception as e:
            # A broken outbox must not stop the log (nor its flush at shutdown).
            self._checkpoint_error = f"checkpoint {cp.seq} not queued: {e}"
            log.exception("audit: checkpoint %d not queued for sync", cp.seq)

    @property
    def keys(self) -> AuditKeys:
        return self._keys

    # -- reporting

    def tip(self) -> Tip:
        """The last durable record and where it ends: what a live verify reads up to."""
        return self._tip

    def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "seq": self._tip.seq,
            "checkpoint_seq": self._checkpoint_seq,
            "segment": self._tip.path.name,
            "key": kid_text(self._keys.current_id),
        }
        if self._damage is not None:
            # Reported, not "degraded": damage is permanent and a degraded health would
            # make every later config push look like it broke the box.
            report["damage"] = self._damage
        problem = self._failed or self._checkpoint_error
        if problem:
            report.update(degraded=True, error=problem)
        return report

    def status(self) -> str:
        return f"audit seq {self._tip.seq}"


class DisabledAudit:
    """The sink when ``audit.enabled = false``: records nothing."""

    async def append(self, kind: str, actor: str, data: Mapping[str, Any]) -> int:
        return 0


async def open_audit(config: AuditConfig, *, state_dir: Path, keys_dir: Path, device_id: str,
                     outbox: OutboxQueue | None = None,
                     registry: CollectorRegistry | None = None) -> AuditLog:
    """Load the keys (making them on a fresh box when ``audit.create_keys``; refusing key
    files others may read) and build the log; enter it to open it."""
    folder = state_dir / "audit"

    def load() -> AuditKeys:
        if config.create_keys:
            ensure_keys(keys_dir, folder)
        return load_keys(keys_dir)

    keys = await asyncio.to_thread(load)
    return AuditLog(config, folder, keys, device_id=device_id, outbox=outbox, registry=registry)
