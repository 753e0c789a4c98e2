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
    Torn,
    check_magic,
    frame_hash,
    iter_frames,
    list_segments,
    segment_name,
)
from edged.audit.keys import AuditKeys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tail:
    path: Path  # the segment to append to
    size: int
    seq: int  # last good seq (0: empty log)
    head: bytes
    key_id: int | None  # key of the last good frame
    recovery: dict[str, Any] | None  # what was cut, if anything


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


def _scan(data: bytes, first_seq: int, head: bytes, keys: AuditKeys
          ) -> tuple[int, int, bytes, int | None, str | None]:
    """(good end, last seq, head, key id, problem) of the last segment's bytes."""
    seq, end, kid = first_seq - 1, len(MAGIC), None
    try:
        for f in iter_frames(data):
            if f.seq != seq + 1:
                return end, seq, head, kid, f"expected seq {seq + 1}, found {f.seq}"
            aead = keys.aead(f.key_id)
            try:
                f.open(aead, head)
            except InvalidTag:
                return end, seq, head, kid, f"frame with seq {f.seq} does not authenticate"
            seq, end, head, kid = f.seq, f.end, frame_hash(f.data), f.key_id
    except Torn as t:
        return end, seq, head, kid, t.problem
    return end, seq, head, kid, None


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


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut(path: Path, data: bytes, end: int) -> Path:
    """Keep the bytes past ``end`` in a torn-*.bin file, then truncate the segment."""
    saved = path.with_name(f"torn-{path.stem}-{end}.bin")
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
    end, seq, head, last_kid, frame_problem = (
        (0, first_seq - 1, head, None, problem) if problem
        else _scan(data, first_seq, head, keys))
    recovery = None
    if end < len(data) or problem:
        saved = _cut(path, data, end)
        recovery = {"segment": path.name, "offset": end, "bytes_cut": len(data) - end,
                    "last_good_seq": seq, "problem": frame_problem, "saved_to": saved.name}
        log.warning("audit: cut a torn tail of %d bytes from %s at offset %d (%s); kept in %s",
                    len(data) - end, path.name, end, frame_problem, saved.name)
    return Tail(path, max(end, len(MAGIC)), seq, head, last_kid or kid, recovery)
