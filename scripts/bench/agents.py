#!/usr/bin/env python3
"""Agents: understanding on the blind sets (tests/agents/blind/, written by people who never
saw the code) and the older sets, and turn times, through the real daemon on the shipped
agent config (bundled encoder; the bundled model writes replies unless --templates).

For each agent and split (dev: tuned on; test: never tuned on) it prints right first tool,
key arguments, reply checks, conversations fully right, and for the clinic red-flag
recall and false escalation on the safety set; then turn times: median, p90, and the first
turn after a start. The reference, measured in the same run: raw llama-cpp-python
in-process writing a reply of the same length from the same model file with the same
threads (no daemon, no routing, no tools); the ratio says what a turn adds to that.

Targets (issue 10, test split): first tool >= 95%, key arguments >= 90%, conversations
>= 80%, red-flag recall 100%, false escalation <= 5%; median turn <= 1 s, p90 <= 2 s,
first turn <= 2x a warm one.

    .venv/bin/python scripts/bench/agents.py [--templates] [--split dev|test|both] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.agents import evalset  # noqa: E402
from tests.agents.blind import scoring  # noqa: E402
from tests.agents.conftest import agents_config  # noqa: E402
from tests.edgedtest import bundled_model, deep_merge, short_tmpdir, start_daemon  # noqa: E402

TARGETS = {"first_tool": 0.95, "key_args": 0.90, "conversations": 0.80,
           "red_flag_recall": 1.0, "false_escalation": 0.05}


def config(state: Path, templates: bool) -> dict[str, Any]:
    """The shipped agents on the bundled encoder and model; model slot proposals off (as
    shipped: docs/agents.md says why)."""
    off = {"model_slots": False, "model_reply": not templates}
    shipped = tomllib.loads((REPO / "config" / "edged.toml").read_text())["agents"]
    return deep_merge(agents_config(state), {"agents": {
        a: {**off, "scope_threshold": shipped[a]["scope_threshold"]}
        for a in ("kiosk", "clinic")}})


def first_turns(templates: bool) -> dict[str, float]:
    """Seconds of the first turn of each agent right after a start (a fresh state dir, so
    no vector cache either: the worst case)."""
    tmp = short_tmpdir()
    try:
        daemon = start_daemon(config(tmp / "st", templates), state_dir=tmp / "st")
        out = {}
        for agent, message in (("kiosk", "do you have the pixel 9"),
                               ("clinic", "any openings with dr patel on friday")):
            started = time.perf_counter()
            daemon.client.post(f"/v1/agents/{agent}/chat", {"message": message})
            out[agent] = round(time.perf_counter() - started, 3)
        daemon.stop()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def evaluate(templates: bool, splits: list[str]) -> dict[str, Any]:
    tmp = short_tmpdir()
    daemon = start_daemon(config(tmp / "st", templates), state_dir=tmp / "st")
    key = tmp / "st" / "keys" / "portal.key"
    try:
        for agent in ("kiosk", "clinic"):  # warm: loads the model once
            daemon.client.post(f"/v1/agents/{agent}/chat", {"message": "hello"})
        out: dict[str, Any] = {}
        for agent in ("kiosk", "clinic"):
            runner = scoring.Runner(daemon.client, agent, key)
            for split in splits:
                score = scoring.run_set(runner, agent, split)
                if agent == "clinic":
                    safety = scoring.run_safety(runner, split)
                    score.urgent, score.urgent_caught = safety.urgent, safety.urgent_caught
                    score.routine = safety.routine
                    score.routine_escalated = safety.routine_escalated
                    score.misses += safety.misses
                out[f"{agent}/{split}"] = {**score.summary(), "misses": score.misses}
            old = evalset.run(daemon.client, agent, evalset.load(agent), evalset.Score())
            out[f"{agent}/older"] = {"requests": old.total,
                                     "first_tool": round(old.tool_rate(), 3),
                                     "key_args": round(old.args_rate(), 3)}
        return out
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def raw_reply_seconds(model: Path, tokens: int, runs: int = 5) -> float:
    """Median time for llama-cpp-python to write ``tokens`` tokens from a reply-sized prompt."""
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=1024, n_threads=2, verbose=False)
    prompt = ("You are the friendly assistant of an electronics store.\nFacts: Yes, we have "
              "the Pixel 9 in stock here: Google Pixel 9 128GB Obsidian (3 left, $798.99).\n"
              "Customer: Do you have the Pixel 9 in stock?\nAnswer the customer in one or two "
              "short sentences, using only the facts.\nAssistant:")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        llm.create_completion(prompt, max_tokens=tokens, temperature=0.2)
        times.append(time.perf_counter() - started)
    llm.close()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--templates", action="store_true",
                        help="template replies: no generator model at all")
    parser.add_argument("--split", choices=("dev", "test", "both"), default="both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model = bundled_model()
    splits = ["dev", "test"] if args.split == "both" else [args.split]
    results: dict[str, Any] = {"first_turn_s": first_turns(args.templates),
                               **evaluate(args.templates, splits)}
    if not args.templates:
        results["reference_raw_reply_s"] = round(raw_reply_seconds(model, 48), 3)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for name, r in results.items():
        if not isinstance(r, dict) or "misses" not in r:
            continue
        print(f"{name:13s} first tool {r['first_tool']}  key args {r['key_args']}  "
              f"reply checks {r['reply_checks']}  conversations {r['conversations']}  "
              f"red-flag recall {r['red_flag_recall']}  false escalation "
              f"{r['false_escalation']}  turn median {r['turn_s_median']} s p90 "
              f"{r['turn_s_p90']} s")
    for name, r in results.items():
        if name.endswith("/older"):
            print(f"{name:13s} {r['requests']} requests: first tool {r['first_tool']}  "
                  f"key args {r['key_args']}")
    print(f"first turn after a start: {results['first_turn_s']}")
    if "reference_raw_reply_s" in results:
        warm = results["kiosk/" + splits[-1]]["turn_s_median"]
        raw = results["reference_raw_reply_s"]
        print(f"reference: raw llama-cpp-python 48-token reply {raw} s; kiosk median turn "
              f"{warm} s = {warm / raw:.2f}x")
    print(f"targets (test split): {TARGETS}")
    for name, r in results.items():
        if isinstance(r, dict) and "misses" in r:
            for miss in r["misses"]:
                print(f"  {name} miss: {miss}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
