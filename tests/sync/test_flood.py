"""A flood of forged config bundles cannot take the outbox from what matters: each refusal
is recorded, a few reach the cloud's queue (small, rate-limited per cause), and an urgent
clinic escalation made afterwards is still queued and the box stays healthy."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from tests.agents.conftest import agents_config
from tests.api.raw import request
from tests.edgedtest import RunningDaemon, deep_merge

PAD = "x" * 200_000  # what an attacker puts in the field a refusal quotes


def forged(i: int) -> bytes:
    base = {"format": "edged-config-bundle/1", "version": i + 1,
            "issued_at": "2026-01-01T00:00:00Z", "key_id": "0123456789abcdef",
            "selector": {"devices": ["test-box"]}, "config": "", "signature": "AA=="}
    variant = i % 3
    if variant == 0:
        base["key_id"] = PAD  # the 244 KiB key_id of the issue
    elif variant == 1:
        base["format"] = PAD
    else:
        base["config"] = PAD[:100_000]  # an unknown key: refused whatever it carries
    return json.dumps(base).encode()


def outbox_bytes(state: Path) -> dict[str, int]:
    with closing(sqlite3.connect(state / "edged.db")) as db:
        return dict(db.execute("SELECT kind, total(size) FROM outbox GROUP BY kind").fetchall())


def test_a_flood_of_refused_bundles_leaves_an_urgent_escalation_deliverable(
        edged: Callable[..., RunningDaemon], state_dir: Path) -> None:
    config = deep_merge(agents_config(state_dir, model=False), {
        "sync": {"max_bytes": "64KiB"}, "remote": {"max_bundle_bytes": "512KiB"}})
    d = edged(config)
    for i in range(90):
        resp = request(d.socket, "POST", "/admin/config", body=forged(i))
        assert resp.status in (400, 401), resp
        assert len(resp.body) < 2000, "a refusal quotes an excerpt, not the payload"
    status = d.client.get("/admin/config")
    assert len(status["history"]) == 20 and all(
        h["outcome"] == "rejected" and len(h["reason"] or "") < 400 for h in status["history"])
    used = outbox_bytes(state_dir)
    assert used.get("event", 0) <= 64 * 1024 * 3 // 4
    body = d.client.post("/v1/agents/clinic/chat",
                         {"message": "I have crushing chest pain, I need a person now"})
    (action,) = body["actions"]
    assert action["tool"] == "escalate_to_human"
    assert action["result"]["notified"] is True, action["result"]
    assert outbox_bytes(state_dir).get("ticket", 0) > 0
    health = d.client.get("/health")
    assert health["status"] == "ok", health["sync"]
    # rate-limited per cause: a few events per cause, the rest counted
    with closing(sqlite3.connect(state_dir / "edged.db")) as db:
        events = [json.loads(p) for (p,) in db.execute(
            "SELECT payload FROM outbox WHERE kind = 'event'")]
    assert 0 < len(events) <= 15
    assert all(len(json.dumps(e)) < 1500 for e in events)
