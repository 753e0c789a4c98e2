"""Staff approval: a tool marked ``approval = "staff"`` waits for an admin or an approver,
on the real daemon; streamed chats see it happen; requests expire; decisions are audited."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edged.client import ApiError
from tests.agents.conftest import KIOSK_TOOLS, agents_config
from tests.api.curl import CLIENT_USER, curl
from tests.edgedtest import RunningDaemon, cli, start_daemon

HANDOFF = "I need to speak to someone about my broken laptop"


@pytest.fixture(scope="module")
def daemon(module_tmp: Path) -> Iterator[RunningDaemon]:
    os.chmod(module_tmp, 0o755)  # nobody (group nogroup, a client) reaches the socket
    desk = {"model": "gemma3-270m", "tools": KIOSK_TOOLS, "store": "downtown",
            "examples_file": str(Path(__file__).parents[2] / "config/agents/kiosk.toml"),
            "approval": {"create_ticket": "staff"}, "approval_timeout": "1s",
            "approver_groups": ["edged-nobody-is-in-this"]}
    config = agents_config(module_tmp / "st", model=False, desk=desk, kiosk={
        "approval": {"create_ticket": "staff"}, "approver_groups": ["nogroup"],
        "approval_timeout": "120s"})
    config["daemon"].update(socket=str(module_tmp / "a.sock"), socket_mode="0666",
                            client_groups=["nogroup"])
    d = start_daemon(config, state_dir=module_tmp / "st")
    yield d
    d.stop()


class StreamedChat:
    """A streamed chat in a thread; events as they arrive."""

    def __init__(self, d: RunningDaemon, agent: str, message: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.waiting = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(d, agent, message))
        self._thread.start()

    def _run(self, d: RunningDaemon, agent: str, message: str) -> None:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket)), timeout=120) as c, \
                c.stream("POST", f"http://edged/v1/agents/{agent}/chat",
                         json={"message": message, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    self.events.append(json.loads(line.removeprefix("data: ")))
                    if self.events[-1].get("state") == "waiting":
                        self.waiting.set()
        self.waiting.set()

    def done(self) -> list[dict[str, Any]]:
        self._thread.join(120)
        return self.events


def waiting_id(chat: StreamedChat) -> str:
    assert chat.waiting.wait(120)
    event = chat.events[-1]
    assert event["type"] == "approval" and event["state"] == "waiting", chat.events
    assert "asked a member of staff" in event["text"]
    return str(event["id"])


def test_an_admin_approves_and_the_turn_completes(daemon: RunningDaemon) -> None:
    chat = StreamedChat(daemon, "kiosk", HANDOFF)
    ident = waiting_id(chat)
    listed = cli("approvals", socket_path=daemon.socket)
    assert listed.returncode == 0 and ident in listed.stdout and "create_ticket" in listed.stdout
    out = cli("approve", ident, socket_path=daemon.socket)
    assert out.returncode == 0 and "approved" in out.stdout
    events = chat.done()
    kinds = [(e["type"], e.get("state")) for e in events]
    assert ("approval", "approved") in kinds
    action = next(e for e in events if e["type"] == "action")
    assert action["tool"] == "create_ticket" and action["result"]["ticket"].startswith("T-")
    assert events[-1]["type"] == "done"
    again = cli("approve", ident, socket_path=daemon.socket)
    assert again.returncode != 0 and "already approved" in again.stderr


def test_an_approver_group_member_denies(daemon: RunningDaemon) -> None:
    chat = StreamedChat(daemon, "kiosk", HANDOFF)
    ident = waiting_id(chat)
    status, body = curl(daemon, f"/admin/approvals/{ident}", user=CLIENT_USER, method="POST",
                        data=b'{"approve": false}')
    assert status == 200 and body["state"] == "denied" and body["decided_by"] == 65534
    events = chat.done()
    done = events[-1]
    assert done["actions"][0]["result"]["error"] == "approval_denied"
    assert "declined" in done["reply"]


def test_a_request_expires_and_others_may_not_decide(daemon: RunningDaemon) -> None:
    chat = StreamedChat(daemon, "desk", HANDOFF)
    ident = waiting_id(chat)
    status, body = curl(daemon, f"/admin/approvals/{ident}", user=CLIENT_USER, method="POST",
                        data=b'{"approve": true}')
    assert status == 403 and "approver_groups" in body["error"]["message"]
    status, listing = curl(daemon, "/admin/approvals", user=CLIENT_USER)
    assert status == 200 and all(r["agent"] == "kiosk" for r in listing["data"])
    done = chat.done()[-1]  # approval_timeout is 1s
    assert done["actions"][0]["result"]["error"] == "approval_expired"
    assert daemon.client.get("/admin/approvals?state=expired")["data"][0]["id"] == ident


def test_decisions_are_audited_and_bad_input_is_refused(daemon: RunningDaemon) -> None:
    with pytest.raises(ApiError) as e:
        daemon.client.post("/admin/approvals/A-NOPE", {"approve": True})
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:
        daemon.client.post("/admin/approvals/A-NOPE", {"approve": "yes"})
    assert e.value.status == 400 and e.value.message.startswith("approve")
    out = cli("audit", "export", "--config", str(daemon.config_path), "--kind",
              "approval.decided")
    assert out.returncode == 0 and '"decision": "approved"' in out.stdout.replace(
        '":"', '": "')


def test_approval_must_name_the_agents_tools(module_tmp: Path) -> None:
    config = agents_config(module_tmp / "bad", model=False,
                           kiosk={"approval": {"book_appointment": "staff"}})
    d = start_daemon(config, state_dir=module_tmp / "bad", expect_ready=False)
    assert d.proc.wait(120) == 78
    assert "agents.kiosk.approval.book_appointment: not one of this agent's tools" in d.log()

