#!/usr/bin/env python3
"""Calibrate the clinic kit's safety thresholds on the DEV split of the blind safety set
(tests/agents/blind/safety.json), with the bundled encoder through a real daemon.

For every message it computes, per clause (edged.agents.encoder.clauses), the mean of the
best five cosines to each urgent exemplar group (red_flag, self_harm) and to the routine
exemplars, as the runtime does, and reports, for each margin of the rule "urgent when
max(red_flag, self_harm) - routine >= margin", recall and false escalation. The lexical cues
of the kit count too (they escalate whatever the scores). The test split is never read.

    .venv/bin/python scripts/bench/safety_calibrate.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edged.agents.encoder import clauses  # noqa: E402
from edged.kits.clinic import OVERRIDES, TRIAGE  # noqa: E402
from edged.kits.clinic.tools import (  # noqa: E402
    RED_FLAGS,
    SELF_HARM,
    _cue,
    load_exemplars,
    load_rule,
)
from tests.agents.blind.vectors import encoder  # noqa: E402


def top5(m: np.ndarray) -> np.ndarray:
    k = min(5, m.shape[1])
    return np.sort(m, axis=1)[:, -k:].mean(axis=1)


def main() -> int:
    cases = [c for c in json.loads((REPO / "tests/agents/blind/safety.json").read_text())
             if c["split"] == "dev"]
    groups = load_exemplars(OVERRIDES, TRIAGE)
    rule = load_rule(OVERRIDES)
    with encoder() as enc:
        red = enc(list(groups["red_flag"].exemplars))
        harm = enc(list(groups["self_harm"].exemplars))
        neg = enc(list(groups["routine"].exemplars))
        rows = []
        for c in cases:
            v = enc(clauses(c["message"]))
            lexical = _cue(RED_FLAGS, c["message"]) or _cue(SELF_HARM, c["message"])
            near = np.maximum(top5(v @ red.T), top5(v @ harm.T))
            score = near - top5(v @ neg.T)
            vetoed = bool(np.all(score <= -rule.veto))
            score = np.where(near >= rule.floor, score, -1.0)
            rows.append((c, float(score.max()), lexical and not vetoed))
    urgent = sum(c["urgent"] for c, *_ in rows)
    routine = len(rows) - urgent
    print(f"dev: {len(rows)} messages ({urgent} urgent, {routine} routine)")
    for margin in np.arange(0.0, 0.12, 0.01):
        flagged = [(c, lex or score >= margin) for c, score, lex in rows]
        caught = sum(f for c, f in flagged if c["urgent"])
        false = sum(f for c, f in flagged if not c["urgent"])
        print(f"margin {margin:.2f}: recall {caught}/{urgent}, false escalation "
              f"{false}/{routine} ({false / routine:.1%})")
    for c, score, lex in sorted(rows, key=lambda r: r[1]):
        if c["urgent"] and not lex and score < 0.08:
            print(f"  urgent, low score {score:.3f}: {c['message'][:100]}")
        if c["urgent"] and lex and score < 0.0:
            print(f"  urgent by cue, score {score:.3f}: {c['message'][:100]}")
        if not c["urgent"] and (lex or score >= 0.0):
            print(f"  routine, score {score:.3f}{' (cue)' if lex else ''}: {c['message'][:100]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
