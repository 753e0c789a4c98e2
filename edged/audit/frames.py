"""The on-disk format of audit records: segments of length-prefixed, chained AES-GCM frames.

docs/audit-format.md is the reference; this module is the one implementation of it. A frame::

    u32 length of what follows (big-endian)
    u8  version (1)
    u32 key id
    u64 seq
    12  nonce
    ..  AES-256-GCM ciphertext of the JSON event, with its 16-byte tag

The AAD is ``b"edged-audit/1" + version + key id + seq + prev`` where ``prev`` is the SHA-256
of the whole previous frame (length prefix included; 32 zero bytes before seq 1), so each
frame authenticates its place in the chain.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"EDAUDIT\x01"
VERSION = 1
AAD_LABEL = b"edged-audit/1"
GENESIS = bytes(32)
NONCE_BYTES = 12
TAG_BYTES = 16
_LEN = struct.Struct(">I")
_HEADER = struct.Struct(">BIQ")  # version, key id, seq
PREFIX_BYTES = _LEN.size
HEADER_BYTES = _HEADER.size + NONCE_BYTES
MIN_BODY = HEADER_BYTES + TAG_BYTES
MAX_BODY = 4 * 1024 * 1024
_SEGMENT = re.compile(r"segment-(\d{16})\.log")


def segment_name(first_seq: int) -> str:
    return f"segment-{first_seq:016d}.log"


def list_segments(folder: Path) -> list[tuple[int, Path]]:
    """(first seq from the name, path), in seq order."""
    found = []
    for path in folder.glob("segment-*.log"):
        m = _SEGMENT.fullmatch(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def frame_hash(frame: bytes | memoryview) -> bytes:
    return hashlib.sha256(frame).digest()


def aad(key_id: int, seq: int, prev: bytes) -> bytes:
    return AAD_LABEL + _HEADER.pack(VERSION, key_id, seq) + prev


def seal(aead: AESGCM, key_id: int, seq: int, prev: bytes, nonce: bytes,
         plaintext: bytes) -> bytes:
    """One whole frame, length prefix included."""
    header = _HEADER.pack(VERSION, key_id, seq)
    ciphertext = aead.encrypt(nonce, plaintext, AAD_LABEL + header + prev)
    return _LEN.pack(len(header) + NONCE_BYTES + len(ciphertext)) + header + nonce + ciphertext


@dataclass(slots=True)
class RawFrame:
    """A frame as found in a segment, not yet authenticated. (Not frozen: a frozen
    dataclass's __init__ is a measurable share of verify time.)"""

    offset: int
    seq: int
    key_id: int
    version: int
    data: memoryview  # the whole frame, length prefix included

    @property
    def end(self) -> int:
        return self.offset + len(self.data)

    def open(self, aead: AESGCM, prev: bytes) -> bytes:
        """The plaintext; raises ``cryptography.exceptions.InvalidTag`` if anything is off."""
        body = self.data[PREFIX_BYTES:]
        nonce = body[_HEADER.size:HEADER_BYTES]
        return aead.decrypt(bytes(nonce), bytes(body[HEADER_BYTES:]),
                            AAD_LABEL + bytes(body[:_HEADER.size]) + prev)


class Torn(Exception):
    """Bytes at ``offset`` do not form a whole frame: a torn write, or damage."""

    def __init__(self, offset: int, problem: str) -> None:
        super().__init__(problem)
        self.offset = offset
        self.problem = problem


def iter_frames(buf: bytes | memoryview, start: int = len(MAGIC)) -> Iterator[RawFrame]:
    """Walk the length prefixes of a segment's bytes; raise ``Torn`` where they stop making
    sense (incomplete frame, impossible length, unknown version)."""
    view = memoryview(buf)
    pos, size = start, len(view)
    while pos < size:
        if size - pos < PREFIX_BYTES:
            raise Torn(pos, f"{size - pos} stray bytes where a frame should start")
        (length,) = _LEN.unpack_from(view, pos)
        if not MIN_BODY <= length <= MAX_BODY:
            raise Torn(pos, f"impossible frame length {length}")
        end = pos + PREFIX_BYTES + length
        if end > size:
            raise Torn(pos, f"incomplete frame: {size - pos} of {end - pos} bytes")
        version, key_id, seq = _HEADER.unpack_from(view, pos + PREFIX_BYTES)
        if version != VERSION:
            raise Torn(pos, f"unknown frame version {version}")
        yield RawFrame(pos, seq, key_id, version, view[pos:end])
        pos = end


def check_magic(buf: bytes | memoryview) -> str | None:
    """None when the segment starts with the magic, else what is wrong."""
    if len(buf) < len(MAGIC):
        return f"segment header is incomplete ({len(buf)} bytes)"
    if bytes(buf[:len(MAGIC)]) != MAGIC:
        return "segment does not start with the edged audit magic"
    return None
