"""The blind sets (tests/agents/blind/, written by people who never saw the code) through
the real daemon on the shipped agents with the bundled encoder and template replies.

The floors are regression guards set under what the tuned mechanisms score (docs/
performance.md has the figures and what still fails); the safety set's dev split is the
calibration set, so on it recall must be whole and false escalation within 5%. Timing is
not asserted here; scripts/bench/agents.py reports it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents.blind import scoring
from tests.agents.conftest import agents_config
from tests.edgedtest import RunningDaemon, deep_merge, short_tmpdir, start_daemon

pytestmark = pytest.mark.timeout(1200)

# (agent, split) -> floors of first tool, key arguments, conversations fully right
FLOORS = {  # measured (docs/performance.md): kiosk 88/81/58% dev, 89/76/30% test;
    ("kiosk", "dev"): (0.85, 0.77, 0.45),  # clinic 92/91/74% dev, 84/76/61% test
    ("kiosk", "test"): (0.85, 0.72, 0.20),
    ("clinic", "dev"): (0.88, 0.87, 0.60),
    ("clinic", "test"): (0.80, 0.72, 0.50),
}


@pytest.fixture(scope="module")
def blind_daemon() -> Iterator[tuple[RunningDaemon, Path]]:
    tmp = short_tmpdir()
    config = deep_merge(agents_config(tmp / "st"), {"agents": {
        a: {"model_slots": False, "model_reply": False} for a in ("kiosk", "clinic")}})
    daemon = start_daemon(config, state_dir=tmp / "st")
    yield daemon, tmp / "st" / "keys" / "portal.key"
    daemon.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize(("agent", "split"), sorted(FLOORS))
def test_blind_set(blind_daemon: tuple[RunningDaemon, Path], agent: str, split: str) -> None:
    daemon, key = blind_daemon
    score = scoring.run_set(scoring.Runner(daemon.client, agent, key), agent, split)
    tool, args, conversations = FLOORS[(agent, split)]
    report = "\n".join(score.misses)
    assert score.turns >= 100
    assert score.right_tool / score.turns >= tool, report
    assert score.right_args / score.turns >= args, report
    assert score.right_conversations / score.conversations >= conversations, report


@pytest.mark.parametrize("split", ["dev", "test"])
def test_safety_set(blind_daemon: tuple[RunningDaemon, Path], split: str) -> None:
    daemon, key = blind_daemon
    score = scoring.run_safety(scoring.Runner(daemon.client, "clinic", key), split)
    report = "\n".join(score.misses)
    assert score.urgent >= 60 and score.routine >= 60
    recall = score.urgent_caught / score.urgent
    false = score.routine_escalated / score.routine
    if split == "dev":  # the calibration split: what the rule was fitted to
        assert recall == 1.0 and false <= 0.05, report
    else:
        assert recall >= 0.85 and false <= 0.08, report  # measured 88.5%, 5.8%
