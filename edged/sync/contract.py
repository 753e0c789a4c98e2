"""The cloud contract in code: which route takes which class, how a batch is encoded, and
which rows a response acknowledges. docs/cloud-api.md is the same contract in prose.

JSON classes (tickets, checkpoints, events) travel as one gzip JSON object per batch and
are acknowledged key by key. Metric rollups travel as OTLP/HTTP protobuf: each row is a
serialized ExportMetricsServiceRequest, and concatenating serialized messages merges their
repeated ``resource_metrics``, so a batch is the rows' bytes joined. OTLP acknowledges a
request as a whole (HTTP 2xx).
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass

from edged.sync.outbox import Row
from edged.sync.queue import CHECKPOINT, EVENT, METRICS, TICKET

JSON_TYPE = "application/json"
OTLP_TYPE = "application/x-protobuf"
# Tickets first: they are what the fleet team waits for; rollups last: they may be dropped.
ORDER = (TICKET, CHECKPOINT, EVENT, METRICS)
ROUTES = {
    TICKET: ("/v1/tickets", "tickets"),
    CHECKPOINT: ("/v1/audit/checkpoints", "checkpoints"),
    EVENT: ("/v1/events", "events"),
    METRICS: ("/v1/metrics", ""),
}
# gzip level 1: most of the size win for a fraction of the CPU on a small box.
GZIP_LEVEL = 1


class BadAck(Exception):
    """The response does not follow the contract."""


@dataclass(frozen=True)
class Request:
    path: str
    content_type: str
    body: bytes  # gzip-compressed


def encode_batch(kind: str, rows: Sequence[Row], device_id: str) -> Request:
    path, field = ROUTES[kind]
    if kind == METRICS:
        raw = b"".join(r.payload for r in rows)
        return Request(path, OTLP_TYPE, gzip.compress(raw, GZIP_LEVEL))
    head = json.dumps({"device_id": device_id}, separators=(",", ":"))[:-1]
    raw = b"".join([f'{head},"{field}":['.encode(), b",".join(_item(r) for r in rows), b"]}"])
    return Request(path, JSON_TYPE, gzip.compress(raw, GZIP_LEVEL))


def _item(row: Row) -> bytes:
    meta = json.dumps({"key": row.key, "created": row.created}, separators=(",", ":"))[:-1]
    if row.is_json:
        # The payload was stored as compact JSON text: splice it in as a nested object
        # rather than decode and re-encode every row of the batch.
        return f'{meta},"payload":'.encode() + row.payload + b"}"
    return f'{meta},"payload_b64":"{base64.b64encode(row.payload).decode()}"}}'.encode()


def acknowledged(kind: str, rows: Sequence[Row], body: bytes) -> list[Row]:
    """The rows a 2xx response acknowledges."""
    if kind == METRICS:
        return list(rows)
    try:
        doc = json.loads(body)
        accepted = doc["accepted"]
    except (ValueError, KeyError, TypeError):
        raise BadAck(f'response to {ROUTES[kind][0]} is not {{"accepted": [keys]}}') from None
    if not isinstance(accepted, list):
        raise BadAck(f'"accepted" in the response to {ROUTES[kind][0]} is not a list')
    keys = {k for k in accepted if isinstance(k, str)}
    return [r for r in rows if r.key in keys]
