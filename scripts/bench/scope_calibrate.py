#!/usr/bin/env python3
"""Calibrate each agent's out-of-scope threshold (``scope_threshold``) on the DEV split of
its blind set (tests/agents/blind/), with the bundled encoder through a real daemon.

A request whose best encoder cosine to any routing example (as the router computes it) is
under the threshold gets the honest "I can't help with that here". This prints, for
candidate thresholds, how many dev requests that need a tool would be refused and how many
that need none would be caught; the test split is never read.

    .venv/bin/python scripts/bench/scope_calibrate.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edged.agents.router import load_intents  # noqa: E402
from tests.agents.blind.vectors import encoder  # noqa: E402


def main() -> int:
    with encoder() as enc:
        for agent in ("kiosk", "clinic"):
            intents = load_intents(REPO / "config" / "agents" / f"{agent}.toml")
            examples = enc([e for i in intents for e in i.examples])
            cases = [c for c in json.loads((REPO / f"tests/agents/blind/{agent}.json")
                                           .read_text())["singles"]
                     if c["split"] == "dev" and not c.get("urgent")]
            nearest = (enc([c["message"] for c in cases]) @ examples.T).max(axis=1)
            tool = np.array([c.get("tool") is not None for c in cases])
            print(f"{agent}: {tool.sum()} dev requests need a tool, {(~tool).sum()} none")
            for t in np.arange(0.15, 0.45, 0.025):
                refused = int((tool & (nearest < t)).sum())
                caught = int((~tool & (nearest < t)).sum())
                print(f"  threshold {t:.3f}: tool requests refused {refused}, "
                      f"no-tool requests caught {caught}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
