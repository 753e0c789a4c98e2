"""Check every frame, the chain and the signed checkpoints; name the first bad record.

Works on a state folder with the keys alone (offline) or, in the daemon, up to the last
durable record (``Tip``) while appends go on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from edged.audit.checkpoints import Checkpoint, CheckpointFile
from edged.audit.frames import GENESIS, RawFrame, Torn, check_magic, frame_hash, iter_frames
from edged.audit.frames import list_segments as _list_segments
from edged.audit.keys import AuditKeys, UnknownKey


@dataclass(frozen=True)
class Problem:
    seq: int | None
    segment: str | None
    problem: str


@dataclass(frozen=True)
class Report:
    ok: bool
    records: int
    first_bad: Problem | None
    checkpoints: int
    head: str | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["first_bad"] = asdict(self.first_bad) if self.first_bad else None
        return out


@dataclass(frozen=True)
class Limit:
    """Verify only up to here: the durable end of a log that is being written."""

    path: Path
    size: int
    seq: int


class Bad(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.problem)
        self.found = problem


class Chain:
    """Walks frames in order; raises ``Bad`` at the first that does not belong."""

    def __init__(self, keys: AuditKeys, signed: dict[int, set[str]]) -> None:
        self.keys = keys
        self.signed = signed
        self.expected = 1
        self.head = GENESIS
        self.segment = ""

    def bad(self, problem: str, seq: int | None = None) -> Bad:
        return Bad(Problem(self.expected if seq is None else seq, self.segment, problem))

    def take(self, f: RawFrame) -> bytes:
        """The frame's plaintext, once it proves to be the next link."""
        if f.seq != self.expected:
            what = ("a record was deleted or records were reordered" if f.seq > self.expected
                    else "records were reordered or replayed")
            raise self.bad(f"expected seq {self.expected}, found seq {f.seq}: {what}")
        try:
            plaintext = f.open(self.keys.aead(f.key_id), self.head)
        except UnknownKey as e:
            raise self.bad(e.message) from None
        except InvalidTag:
            raise self.bad("frame does not authenticate: its bytes were altered, or the "
                           "record before it was changed or removed") from None
        self.head = frame_hash(f.data)
        heads = self.signed.get(f.seq)
        if heads is not None and heads != {self.head.hex()}:
            raise self.bad("chain head differs from the signed checkpoint: the log was "
                           "rewritten up to here")
        self.expected += 1
        return plaintext


def _checkpoints(folder: Path, keys: AuditKeys, limit: Limit | None
                 ) -> tuple[dict[int, set[str]], Problem | None]:
    signed: dict[int, set[str]] = {}
    for line, cp in CheckpointFile(folder).read():
        if not isinstance(cp, Checkpoint):
            return signed, Problem(None, "checkpoints", f"line {line}: {cp}")
        if limit is not None and cp.seq > limit.seq:
            continue  # written after the live snapshot was taken
        if not cp.signed_by(keys.public):
            return signed, Problem(cp.seq, "checkpoints",
                                   f"line {line}: checkpoint signature does not verify with "
                                   "the device key")
        signed.setdefault(cp.seq, set()).add(cp.head)
    return signed, None


def _segments(folder: Path, limit: Limit | None) -> Iterator[tuple[int, Path, bytes]]:
    for first, path in _list_segments(folder):
        if limit is not None and path.name > limit.path.name:
            return
        data = path.read_bytes()
        if limit is not None and path == limit.path:
            data = data[:limit.size]
        yield first, path, data


def records(folder: Path, chain: Chain, limit: Limit | None = None) -> Iterator[bytes]:
    """Each record's plaintext in seq order; raises ``Bad`` at the first that fails."""
    for first, path, data in _segments(folder, limit):
        chain.segment = path.name
        if first != chain.expected:
            what = (f"records {chain.expected}..{first - 1} are missing: a segment was removed"
                    if first > chain.expected
                    else f"segment starts at seq {first} but the chain is at {chain.expected}")
            raise chain.bad(what)
        problem = check_magic(data)
        if problem:
            raise chain.bad(problem)
        try:
            for f in iter_frames(data):
                yield chain.take(f)
        except Torn as t:
            raise chain.bad(f"torn or damaged frame at offset {t.offset}: {t.problem}") from None


def verify(folder: Path, keys: AuditKeys, limit: Limit | None = None) -> Report:
    """Blocking: reads every segment."""
    signed, cp_problem = _checkpoints(folder, keys, limit)
    chain = Chain(keys, signed)
    first_bad = cp_problem
    try:
        for _ in records(folder, chain, limit):
            pass
    except Bad as b:
        first_bad = b.found
    last = chain.expected - 1
    if first_bad is None and signed and max(signed) > last:
        first_bad = Problem(last + 1, chain.segment or None,
                            f"the log ends at seq {last} but a signed checkpoint covers seq "
                            f"{max(signed)}: records were cut off")
    return Report(first_bad is None, last, first_bad, sum(len(h) for h in signed.values()),
                  chain.head.hex() if last else None)
