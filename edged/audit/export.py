"""Decrypt the log for an auditor: one JSON object per record, in seq order."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from edged.audit.keys import AuditKeys
from edged.audit.log import utc_text
from edged.audit.verify import Bad, Chain, records
from edged.errors import IntegrityError


def export(folder: Path, keys: AuditKeys, *, since: datetime | None = None,
           kinds: Collection[str] = ()) -> Iterator[dict[str, Any]]:
    """Blocking. Every record that authenticates and links, filtered; an ``IntegrityError``
    naming the seq where the chain breaks (after yielding everything before it)."""
    after = utc_text(since.timestamp()) if since else None
    chain = Chain(keys, {})
    try:
        for raw in records(folder, chain):
            event: dict[str, Any] = json.loads(raw)
            if kinds and event.get("kind") not in kinds:
                continue
            if after and str(event.get("time", "")) < after:
                continue
            yield event
    except Bad as b:
        raise IntegrityError(f"audit record {b.found.seq} in {b.found.segment}: "
                             f"{b.found.problem}") from None
