"""Tickets from a real producer: the clinic agent escalates to a human (routing by words, no
model load), the ticket is queued with the session's facts, and the cloud gets it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agents.conftest import agents_config
from tests.edgedtest import RunningDaemon, deep_merge
from tests.sync.fakecloud import threaded_cloud

ESCALATE = "I have chest pain, I need a person"


def escalate(d: RunningDaemon) -> dict[str, Any]:
    body: dict[str, Any] = d.client.post("/v1/agents/clinic/chat", {"message": ESCALATE})
    return body


def test_a_ticket_made_offline_arrives_on_the_first_attempt_after_the_cloud_returns(
        edged: Callable[..., RunningDaemon], state_dir: Path) -> None:
    with threaded_cloud() as (cloud, _call):
        cloud.mode = "500"
        config = deep_merge(agents_config(state_dir, model=False), {"sync": {
            "endpoint": cloud.url, "backoff_base": "50ms", "backoff_cap": "300ms"}})
        d = edged(config)
        body = escalate(d)
        assert [a["tool"] for a in body["actions"]] == ["escalate_to_human"]
        assert cloud.wait_for(lambda c: len(c.requests) >= 2)  # offline for a while
        cloud.mode = "ok"
        before = len(cloud.requests)
        assert cloud.wait_for(lambda c: any(v["route"] == "/v1/tickets"
                                            for v in c.stored.values()))
        ticket_requests = [m for p, m in cloud.requests[before:] if p == "/v1/tickets"]
        assert ticket_requests == ["ok"]  # the first attempt after it came back carried it
        (ticket,) = [v for v in cloud.stored.values() if v["route"] == "/v1/tickets"]
        assert ticket["payload"]["agent"] == "clinic"
        assert "chest" not in json.dumps(ticket)  # PHI agent: an opaque reference only


def test_a_full_outbox_refuses_the_ticket_and_says_so(
        edged: Callable[..., RunningDaemon], state_dir: Path) -> None:
    config = deep_merge(agents_config(state_dir, model=False),
                        {"sync": {"max_bytes": "100"}, "audit": {"enabled": False}})
    d = edged(config)
    body = escalate(d)
    # The agent turns the outbox's 507 into the tool's result: the person is told in plain
    # words (and, at the clinic, what to do in an emergency); the detail stays for operators.
    (action,) = body["actions"]
    assert action["result"]["notified"] is False and action["result"]["ticket"] is None
    assert "outbox is full" in action["result"]["detail"]
    assert "couldn't notify staff" in body["reply"]
    assert "emergency number" in body["reply"]
    assert "outbox" not in body["reply"]
    health = d.client.get("/health")
    assert health["status"] == "degraded" and health["sync"]["degraded"]
    assert health["sync"]["queued"]["ticket"] == 0
