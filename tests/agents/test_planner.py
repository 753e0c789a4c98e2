"""``planner = "model"`` with the bundled model: its calls go through the same allowlist,
checks and audit; what does not validate falls back to the router."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agents.conftest import agents_config
from tests.edgedtest import RunningDaemon, start_daemon


@pytest.fixture(scope="module")
def daemon(module_tmp: Path) -> Iterator[RunningDaemon]:
    config = agents_config(module_tmp / "st", model=True,
                           kiosk={"planner": "model", "model_reply": False,
                                  "model_slots": False})
    d = start_daemon(config, state_dir=module_tmp / "st")
    yield d
    d.stop()


def chat(d: RunningDaemon, message: str) -> dict[str, Any]:
    result: dict[str, Any] = d.client.post("/v1/agents/kiosk/chat", {"message": message})
    return result


@pytest.mark.parametrize("message", [
    "Do you have the Google Pixel 9 in stock?",
    "is the Sony WH-1000XM5 available",
    "I want to speak to a member of staff about a refund",
])
def test_every_planned_call_is_allowed_and_valid(daemon: RunningDaemon, message: str) -> None:
    turn = chat(daemon, message)
    assert turn["planned_by"] in ("model", "router")
    kiosk = next(a for a in daemon.client.get("/v1/agents")["data"] if a["name"] == "kiosk")
    for action in turn["actions"]:
        assert action["tool"] in kiosk["tools"]
        assert "error" not in action["result"] or action["result"]["error"] != "bad_request"


def test_the_router_still_plans_what_the_model_gets_wrong(daemon: RunningDaemon) -> None:
    # Out of scope: whatever the model calls does not name a product of the catalog.
    turn = chat(daemon, "what's the wifi password here?")
    assert turn["planned_by"] == "router" and turn["actions"] == []
