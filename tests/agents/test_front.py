"""A front desk (``kind = "front"``) on the real daemon: each turn goes to the member it is
meant for, a change of member is a ``handoff`` action, the members' rules still apply."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agents.conftest import agents_config
from tests.api.curl import CLIENT_USER, curl
from tests.edgedtest import RunningDaemon, start_daemon


@pytest.fixture(scope="module")
def daemon(module_tmp: Path) -> Iterator[RunningDaemon]:
    os.chmod(module_tmp, 0o755)  # nobody (a client outside the clinic's group) connects too
    config = agents_config(module_tmp / "st", model=False,
                           front={"kind": "front", "members": ["kiosk", "clinic"],
                                  "description": "The front desk"},
                           clinic={"allowed_groups": ["edged-clinic-test"]})
    config["daemon"].update(socket=str(module_tmp / "f.sock"), socket_mode="0666",
                            client_groups=["nogroup"])
    d = start_daemon(config, state_dir=module_tmp / "st")
    yield d
    d.stop()


def chat(d: RunningDaemon, message: str, session: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message}
    if session:
        body["session_id"] = session
    result: dict[str, Any] = d.client.post("/v1/agents/front/chat", body)
    return result


def tools(turn: dict[str, Any]) -> list[str]:
    return [a["tool"] for a in turn["actions"]]


def test_turns_go_to_the_member_they_are_for(daemon: RunningDaemon) -> None:
    first = chat(daemon, "Do you have the Pixel 9 in stock?")
    assert first["actions"][0] == {"tool": "handoff", "arguments": {"to": "kiosk"},
                                   "result": {"summary": "Handed to kiosk."}}
    assert tools(first)[1] == "check_inventory"
    session = first["session_id"]
    follow = chat(daemon, "and in black?", session)
    assert "handoff" not in tools(follow)  # the same member keeps the conversation
    clinic = chat(daemon, "I'd like to book an appointment with Dr. Patel", session)
    assert clinic["actions"][0]["arguments"] == {"to": "clinic"}
    assert clinic["session_id"] == session


def test_a_members_safety_rule_wins_whoever_had_the_conversation(
        daemon: RunningDaemon) -> None:
    first = chat(daemon, "Do you have the Pixel 9 in stock?")
    urgent = chat(daemon, "I have crushing chest pain and can't breathe", first["session_id"])
    assert tools(urgent)[:2] == ["handoff", "escalate_to_human"]
    assert urgent["actions"][1]["arguments"]["reason"] == "urgent"


def test_a_member_the_caller_may_not_use_is_never_reached(daemon: RunningDaemon) -> None:
    status, turn = curl(daemon, "/v1/agents/front/chat", user=CLIENT_USER, method="POST",
                        data=json.dumps({"message": "book an appointment with Dr. Patel "
                                                    "tomorrow"}).encode())
    assert status == 200
    assert all(a["arguments"].get("to") != "clinic" for a in turn["actions"]
               if a["tool"] == "handoff")
    assert not any(t in ("book_appointment", "check_appointment_availability")
                   for t in tools(turn))


def test_the_front_desk_session_is_sealed_when_a_member_handles_phi(
        daemon: RunningDaemon) -> None:
    turn = chat(daemon, "I'd like to book an appointment with Dr. Patel")
    db = sqlite3.connect(daemon.state_dir / "edged.db")
    try:
        row = db.execute("SELECT encrypted, state FROM agent_sessions WHERE id = ?",
                         (turn["session_id"],)).fetchone()
    finally:
        db.close()
    assert row[0] == 1 and b"Patel" not in row[1]


def test_it_is_listed_with_its_members(daemon: RunningDaemon) -> None:
    front = next(a for a in daemon.client.get("/v1/agents")["data"] if a["name"] == "front")
    assert front["kind"] == "front" and front["members"] == ["kiosk", "clinic"]
    assert front["tools"] == []
