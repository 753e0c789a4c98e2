"""The evaluation set: requests with their expected tool and key arguments, and how a
daemon's answers are scored. Used by tests/agents/test_evaluation.py and
scripts/bench/agents.py. None of these requests is among the routing examples in
config/agents/."""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.client import Client

HERE = Path(__file__).parent
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def load(agent: str, kind: str = "eval") -> list[dict[str, Any]]:
    """``eval``: the evaluation set; ``holdout``: 30 more requests written after the routing
    was tuned, to see how far that tuning generalises."""
    data: list[dict[str, Any]] = json.loads((HERE / f"{kind}_{agent}.json").read_text())
    return data


def expected_date(spec: str, today: dt.date) -> str:
    """"+1d" is tomorrow; "dow:tue" the coming Tuesday (next week's if today is one)."""
    if spec.startswith("+"):
        return (today + dt.timedelta(days=int(spec[1:-1]))).isoformat()
    ahead = (DAYS.index(spec[4:]) - today.weekday()) % 7 or 7
    return (today + dt.timedelta(days=ahead)).isoformat()


def norm(value: Any) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", str(value).lower()))


@functools.cache
def _providers_of(specialty: str) -> tuple[str, ...]:
    clinic = json.loads((HERE.parents[1] / "config" / "data" / "clinic.json").read_text())
    return tuple(p["name"] for p in clinic["providers"] if p["specialty"] == specialty)


def arg_matches(key: str, want: Any, got: Any, today: dt.date) -> bool:
    if got is None:
        return False
    if key == "provider" and str(got) in _providers_of(str(want)):
        return True  # a specialty with one provider is named by that provider
    if key == "date":
        return str(got) == expected_date(str(want), today)
    if key == "items":
        return all(any(norm(w["product"]) in norm(g.get("product", ""))
                       and w["quantity"] == g.get("quantity") for g in got) for w in want)
    if isinstance(want, int | float):
        return float(got) == float(want)
    return norm(want) in norm(got) or (norm(got) in norm(want) and bool(norm(got)))


@dataclass
class Score:
    total: int = 0
    right_tool: int = 0
    right_args: int = 0
    route_ms: list[float] = field(default_factory=list)
    turn_s: list[float] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)

    def tool_rate(self) -> float:
        return self.right_tool / self.total

    def args_rate(self) -> float:
        return self.right_args / self.total


def chosen(body: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The tool a turn chose and its arguments, whether it ran or asked for a missing slot."""
    pending = body.get("pending") or {}
    if pending:  # a request waiting for a detail (the free slots may be shown first)
        return pending.get("tool"), pending.get("arguments", {})
    if body["actions"]:
        return body["actions"][0]["tool"], body["actions"][0]["arguments"]
    return None, {}


def run(client: Client, agent: str, cases: list[dict[str, Any]], score: Score,
        timer: Any = None) -> Score:
    import time

    today = dt.date.today()
    for case in cases:
        started = time.perf_counter()
        body = client.post(f"/v1/agents/{agent}/chat", {"message": case["message"]})
        score.turn_s.append(time.perf_counter() - started)
        score.route_ms.append(body.get("route_ms", 0.0))
        tool, args = chosen(body)
        score.total += 1
        ok_tool = tool == case["tool"]
        ok_args = ok_tool and all(arg_matches(k, v, args.get(k), today)
                                  for k, v in case["args"].items())
        score.right_tool += ok_tool
        score.right_args += ok_args
        if not ok_args:
            score.misses.append(f"{case['message']!r}: want {case['tool']} {case['args']}, "
                                f"got {tool} {args}")
    return score
