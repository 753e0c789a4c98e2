"""What the rest of edged needs from the audit log: append an event, durably."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class AuditSink(Protocol):
    async def append(self, kind: str, actor: str, data: Mapping[str, Any]) -> int:
        """Append one event; return its seq once it is durable (fsynced).

        ``kind`` is a dotted name (``api.request``, ``tool.call``, ``model.load``,
        ``config.apply``...), ``actor`` who did it (``uid:1000``, ``agent:kiosk``, ``daemon``).
        """
        ...
