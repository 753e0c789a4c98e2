"""Signed checkpoints: (seq, chain head) signed with the device key.

Kept as JSON lines in ``<state>/audit/checkpoints`` and queued for the cloud, so a log cut
behind a checkpoint shows, on the box and off it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FILE_NAME = "checkpoints"


@dataclass(frozen=True)
class Checkpoint:
    device: str
    seq: int
    head: str  # hex SHA-256 of the frame with this seq
    time: str
    sig: str = ""  # hex Ed25519 signature over signed_bytes()

    def signed_bytes(self) -> bytes:
        fields = {"device": self.device, "head": self.head, "seq": self.seq, "time": self.time}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def signed_by(self, public: Ed25519PublicKey) -> bool:
        try:
            public.verify(bytes.fromhex(self.sig), self.signed_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sign(device: str, seq: int, head: bytes, time: str, key: Ed25519PrivateKey) -> Checkpoint:
    unsigned = Checkpoint(device, seq, head.hex(), time)
    return Checkpoint(device, seq, head.hex(), time, key.sign(unsigned.signed_bytes()).hex())


def parse_line(line: str) -> Checkpoint:
    """Raises ValueError on a malformed line."""
    try:
        raw = json.loads(line)
        cp = Checkpoint(str(raw["device"]), int(raw["seq"]), str(raw["head"]),
                        str(raw["time"]), str(raw["sig"]))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"malformed checkpoint line: {e}") from None
    return cp


class CheckpointFile:
    def __init__(self, folder: Path) -> None:
        self.path = folder / FILE_NAME

    def append(self, cp: Checkpoint) -> None:
        """Blocking: one line, fsynced."""
        line = json.dumps(cp.as_dict(), sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def repair_tail(self) -> int:
        """Cut a partial last line left by a crash; returns the bytes cut."""
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep == len(data):
            return 0
        with self.path.open("r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())
        return len(data) - keep

    def read(self) -> list[tuple[int, Checkpoint | str]]:
        """(line number, checkpoint or what is wrong with the line)."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        # Only whole lines: a last line without its newline is being written right now, or
        # was cut by a crash (and is removed at the next start); it was never a checkpoint.
        whole = data[:data.rfind(b"\n") + 1].decode(errors="replace")
        out: list[tuple[int, Checkpoint | str]] = []
        for n, line in enumerate(whole.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append((n, parse_line(line)))
            except ValueError as e:
                out.append((n, str(e)))
        return out
