"""The evaluation set through the real daemon on the bundled model (embeddings routing,
grammar slot filling): right tool >= 90%, right key arguments >= 80%.

Timing is not asserted here; scripts/bench/agents.py reports it.
"""

from __future__ import annotations

import pytest

from tests.agents import evalset
from tests.edgedtest import RunningDaemon

pytestmark = pytest.mark.timeout(1200)


@pytest.mark.parametrize("agent", ["kiosk", "clinic"])
def test_evaluation_set(routing_daemon: RunningDaemon, agent: str) -> None:
    cases = evalset.load(agent)
    assert len(cases) >= 60
    score = evalset.run(routing_daemon.client, agent, cases, evalset.Score())
    report = "\n".join(score.misses)
    assert score.tool_rate() >= 0.90, report
    assert score.args_rate() >= 0.80, report
