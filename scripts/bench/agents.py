#!/usr/bin/env python3
"""Agents: routing accuracy on the evaluation set, and routing and turn times, on the bundled
model through the real daemon.

Targets (issue 4): right tool >= 90%, right key arguments >= 80%, median routing <= 150 ms,
median full kiosk turn with its reply <= 2 s on 2 cores. The reference, measured in the same
run: raw llama-cpp-python in-process writing a reply of the same length from the same model
file with the same threads (no daemon, no routing, no tools). The ratio says what the agent
adds on top of generating the reply.

    .venv/bin/python scripts/bench/agents.py [--words-only] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.agents import evalset  # noqa: E402
from tests.agents.conftest import agents_config  # noqa: E402
from tests.edgedtest import bundled_model, short_tmpdir, start_daemon  # noqa: E402

TOOL_TARGET, ARGS_TARGET, ROUTE_MS_TARGET, TURN_S_TARGET = 0.90, 0.80, 150.0, 2.0


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


def evaluate(words_only: bool) -> dict[str, Any]:
    tmp = short_tmpdir()
    daemon = start_daemon(agents_config(tmp / "st", model=not words_only), state_dir=tmp / "st")
    try:
        # One warm-up turn per agent: the first loads the model and embeds the examples.
        for agent in ("kiosk", "clinic"):
            daemon.client.post(f"/v1/agents/{agent}/chat", {"message": "hello"})
        out: dict[str, Any] = {}
        for agent in ("kiosk", "clinic"):
            score = evalset.run(daemon.client, agent, evalset.load(agent), evalset.Score())
            out[agent] = {
                "requests": score.total, "right_tool": round(score.tool_rate(), 3),
                "right_args": round(score.args_rate(), 3),
                "route_ms_median": round(statistics.median(score.route_ms), 1),
                "turn_s_median": round(statistics.median(score.turn_s), 3),
                "misses": score.misses}
            held = evalset.run(daemon.client, agent, evalset.load(agent, "holdout"),
                               evalset.Score())
            out[agent]["holdout"] = {"requests": held.total,
                                     "right_tool": round(held.tool_rate(), 3),
                                     "right_args": round(held.args_rate(), 3)}
        return out
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--words-only", action="store_true",
                        help="no model: lexical routing and template replies")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model = bundled_model()
    results = evaluate(args.words_only)
    if not args.words_only:
        raw = raw_reply_seconds(model, 48)
        results["reference_raw_reply_s"] = round(raw, 3)
        results["kiosk_turn_vs_raw_reply"] = round(results["kiosk"]["turn_s_median"] / raw, 2)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for agent in ("kiosk", "clinic"):
        r = results[agent]
        print(f"{agent:7s} right tool {r['right_tool']:.1%} (target {TOOL_TARGET:.0%})  "
              f"right args {r['right_args']:.1%} (target {ARGS_TARGET:.0%})  "
              f"routing median {r['route_ms_median']} ms (target {ROUTE_MS_TARGET:.0f})  "
              f"turn median {r['turn_s_median']} s (target {TURN_S_TARGET})")
        h = r["holdout"]
        print(f"        held-out {h['requests']}: right tool {h['right_tool']:.1%}  "
              f"right args {h['right_args']:.1%}")
        for miss in r["misses"]:
            print(f"    miss: {miss}")
    if "reference_raw_reply_s" in results:
        print(f"reference: raw llama-cpp-python 48-token reply {results['reference_raw_reply_s']}"
              f" s; kiosk turn / raw reply = {results['kiosk_turn_vs_raw_reply']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
