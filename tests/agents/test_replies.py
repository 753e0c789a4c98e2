"""Replies written by the bundled model, checked against the tool results."""

from __future__ import annotations

import re

from tests.edgedtest import RunningDaemon


def test_model_is_used(model_daemon: RunningDaemon) -> None:
    """The model routes (embeddings) and may write; its reply never invents a number."""
    body = model_daemon.client.post("/v1/agents/kiosk/chat",
                                    {"message": "Do you have the Pixel 9 in stock?"})
    agents = {a["name"]: a for a in model_daemon.client.get("/v1/agents")["data"]}
    assert agents["kiosk"]["routing"] == "ready"
    facts = body["actions"][0]["result"]["summary"]
    assert body["reply_by"] in ("model", "template")
    if body["reply_by"] == "template":
        assert body["reply"] == facts
    assert set(re.findall(r"\d+(?:\.\d+)?", body["reply"])) <= set(
        re.findall(r"\d+(?:\.\d+)?", facts))
