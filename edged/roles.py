"""Who is asking: the caller of a request and its role, as the API resolved them from the
socket's peer credentials (edged/api/peer.py). Plain types, so the engine layers (agents)
can check a caller without knowing anything of HTTP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

# A component's health: a JSON-able dict read by /health (and by the config rollback check).
HealthSource = Callable[[], dict[str, Any]]


class Role(IntEnum):
    NONE = 0
    CLIENT = 1
    ADMIN = 2


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[str]
    role: Role

    def describe(self) -> dict[str, object]:
        return {"uid": self.uid, "gid": self.gid, "pid": self.pid, "role": self.role.name.lower()}
