"""The evaluation set through the real daemon on the bundled model (embeddings routing,
grammar slot filling, model-written replies): right tool >= 90%, right key arguments >= 80%.

Timing is not asserted here; scripts/bench/agents.py reports it.
"""

from __future__ import annotations

import pytest

from tests.agents import evalset
from tests.edgedtest import RunningDaemon

pytestmark = pytest.mark.timeout(1200)


@pytest.mark.parametrize("agent", ["kiosk", "clinic"])
def test_evaluation_set(model_daemon: RunningDaemon, agent: str) -> None:
    cases = evalset.load(agent)
    assert len(cases) >= 60
    score = evalset.run(model_daemon.client, agent, cases, evalset.Score())
    report = "\n".join(score.misses)
    assert score.tool_rate() >= 0.90, report
    assert score.args_rate() >= 0.80, report


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
    import re
    assert set(re.findall(r"\d+(?:\.\d+)?", body["reply"])) <= set(
        re.findall(r"\d+(?:\.\d+)?", facts))
