"""Opening the log after a stop or a crash: find the chain head, cut a torn tail.

Only the last segment can hold a torn write, so it is read whole and every frame
authenticated; at the first one that is incomplete or does not authenticate, the rest is
cut. The cut bytes are kept beside the segments (``torn-*.bin``), never just dropped.
An unknown key id is not a torn write: opening stops with a clear error instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from edged.audit.frames import (
    GENESIS,
    MAGIC,
    RawFrame,
    Torn,
    check_magic,
    frame_hash,
    iter_frames,
    list_segments,
    segment_name,
)
from edged.audit.keys import AuditKeys, kid_text
from edged.durable import fsync_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tail:
    path: Path  # the segment to append to
    size: int
    seq: int  # last good seq (0: empty log)
    head: bytes
    key_id: int | None  # key of the last good frame
    recovery: dict[str, Any] | None  # what was cut, if anything
    damage: dict[str, Any] | None = None  # a bad frame inside the segment, left in place


def _last_frame(path: Path) -> tuple[int | None, bytes | None, int | None]:
    """(seq, hash, key id) of the last whole frame of an older segment (structure only)."""
    seq: int | None = None
    head: bytes | None = None
    kid: int | None = None
    data = path.read_bytes()
    try:
        for f in iter_frames(data):
            seq, head, kid = f.seq, frame_hash(f.data), f.key_id
    except Torn:
        pass  # verify reports it; here only the chain head matters
    return seq, head, kid


@dataclass
class _Scan:
    end: int  # where the good part of the segment ends
    seq: int
    head: bytes
    kid: int | None
    problem: str | None = None  # why the rest is cut
    damage: dict[str, Any] | None = None  # the first bad frame that later records vouch for


def _problem(f: RawFrame, scan: _Scan, keys: AuditKeys) -> str | None:
    """Why ``f`` is not the next link of the chain, or None if it is."""
    if f.seq != scan.seq + 1:
        return f"expected seq {scan.seq + 1}, found {f.seq}"
    if f.key_id not in keys.keys and scan.kid is not None:
        # Frames before it opened: this is damage or garbage, not a log written with
        # another key (which stops the start below, with keys.aead's clear error).
        return f"frame with seq {f.seq} names unknown key {kid_text(f.key_id)}"
    try:
        f.open(keys.aead(f.key_id), scan.head)
    except InvalidTag:
        return f"frame with seq {f.seq} does not authenticate"
    return None


def _vouched(data: bytes, bad: RawFrame, keys: AuditKeys) -> bool:
    """Whether a later frame links to its predecessor past ``bad``: then ``bad`` was damaged
    after more records were written on top of it, which no torn write does."""
    prev = bad
    try:
        for g in iter_frames(data, bad.end):
            if g.seq == prev.seq + 1 and g.key_id in keys.keys:
                try:
                    g.open(keys.aead(g.key_id), frame_hash(prev.data))
                    return True
                except InvalidTag:
                    pass
            prev = g
    except Torn:
        pass
    return False


def _scan(data: bytes, first_seq: int, head: bytes, kid: int | None, keys: AuditKeys,
          name: str) -> _Scan:
    """Authenticate the last segment frame by frame. A bad frame with good links after it is
    damage, left in place for verify to report; a bad frame with none is a torn tail."""
    scan = _Scan(len(MAGIC), first_seq - 1, head, kid if kid in keys.keys else None)
    try:
        for f in iter_frames(data):
            problem = _problem(f, scan, keys)
            if problem is not None:
                if not _vouched(data, f, keys):
                    scan.problem = problem
                    return scan
                scan.damage = scan.damage or {"segment": name, "offset": f.offset,
                                              "seq": scan.seq + 1, "problem": problem}
            scan.end, scan.seq, scan.head, scan.kid = f.end, f.seq, frame_hash(f.data), f.key_id
    except Torn as t:
        scan.problem = t.problem
    return scan


def _new_segment(folder: Path, first_seq: int) -> Path:
    path = folder / segment_name(first_seq)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, MAGIC)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(folder)
    return path


def _cut(path: Path, data: bytes, end: int) -> Path:
    """Keep the bytes past ``end`` in a torn-*.bin file, then truncate the segment."""
    saved = path.with_name(f"torn-{path.stem}-{end}.bin")
    n = 1
    while saved.exists():  # a second crash at the same place: keep both
        n += 1
        saved = path.with_name(f"torn-{path.stem}-{end}-{n}.bin")
    saved.write_bytes(data[end:])
    with path.open("r+b") as f:
        if end < len(MAGIC):
            f.truncate(0)
            f.write(MAGIC)
        else:
            f.truncate(end)
        os.fsync(f.fileno())
    fsync_dir(path.parent)
    return saved


def recover(folder: Path, keys: AuditKeys) -> Tail:
    """Blocking. Creates the folder and the first segment on a fresh box."""
    folder.mkdir(mode=0o750, parents=True, exist_ok=True)
    segments = list_segments(folder)
    if not segments:
        return Tail(_new_segment(folder, 1), len(MAGIC), 0, GENESIS, None, None)
    head, kid = GENESIS, None
    if len(segments) > 1:
        _, prev_head, kid = _last_frame(segments[-2][1])
        head = prev_head or GENESIS
    first_seq, path = segments[-1]
    data = path.read_bytes()
    problem = check_magic(data)
    scan = (_Scan(0, first_seq - 1, head, None, problem) if problem
            else _scan(data, first_seq, head, kid, keys, path.name))
    recovery = None
    if scan.end < len(data) or problem:
        saved = _cut(path, data, scan.end)
        recovery = {"segment": path.name, "offset": scan.end, "bytes_cut": len(data) - scan.end,
                    "last_good_seq": scan.seq, "problem": scan.problem, "saved_to": saved.name}
        log.warning("audit: cut a torn tail of %d bytes from %s at offset %d (%s); kept in %s",
                    len(data) - scan.end, path.name, scan.end, scan.problem, saved.name)
    if scan.damage:
        log.error("audit: the log is damaged at seq %d in %s (%s); left in place, run "
                  "`edged audit verify`", scan.damage["seq"], path.name, scan.damage["problem"])
    return Tail(path, max(scan.end, len(MAGIC)), scan.seq, scan.head, scan.kid or kid,
                recovery, scan.damage)
