"""Remote aliases: what edged adds in front of an OpenAI-compatible server, and how fast a
dead server stops costing anything.

    .venv/bin/python scripts/bench/remote.py [overhead|failover|all] [--runs 5]

- overhead: a 128-token streamed chat completion (temperature 0, same prompt) through
  edged's socket to a remote alias on llama_cpp.server, against the same request straight
  to that server over TCP. Runs interleave (direct, edged, direct, ...). Target: edged's
  total time <= 1.05x direct.
- failover: the server goes down (SIGKILL: connections refused) or hangs (SIGSTOP: it
  accepts and never answers). Time from the first request after that to its answer from
  the local fallback, against the same request sent straight to the local alias in the
  same run; for the hang, also the requests after the breaker opened (they no longer pay
  the timeout).

Every figure prints next to its reference measured in the same run, and the ratio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import THREADS, Unix, edged, llama_server

from tests.edgedtest import bundled_alias, bundled_model

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
TOKENS = 128
TIMEOUT = 2.0  # the remote alias's timeout in the failover part
SERVER_ARGS = ("--chat_format", "gemma")  # the GGUF's own template ends the turn at once


def stream(conn: http.client.HTTPConnection, body: dict[str, Any], path: str
           ) -> dict[str, Any]:
    """Time to the first content piece and to the end of one streamed chat completion."""
    started = time.perf_counter()
    conn.request("POST", path, json.dumps({**body, "stream": True}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first: float | None = None
    pieces = 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        delta = json.loads(line[6:])["choices"]
        if delta and delta[0]["delta"].get("content"):
            pieces += 1
            first = first or time.perf_counter()
    end = time.perf_counter()
    return {"ttft": (first or end) - started, "total": end - started, "pieces": pieces,
            "served_by": resp.getheader("x-edged-served-by"), "status": resp.status}


def whole(conn: http.client.HTTPConnection, model: str) -> dict[str, Any]:
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": model, "messages": PROMPT, "max_tokens": 16, "temperature": 0}),
        {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    return {"seconds": time.perf_counter() - started, "status": resp.status,
            "served_by": resp.getheader("x-edged-served-by")}


def _line(name: str, value: float, ref_name: str, ref: float, unit: str = "s") -> None:
    print(f"  {name:<38} {value:8.3f}{unit}   {ref_name:<24} {ref:8.3f}{unit}   "
          f"ratio {value / ref if ref else float('nan'):.3f}")


def overhead(runs: int) -> None:
    model = bundled_model()
    with llama_server(model, *SERVER_ARGS) as port:
        models = {"backroom": {"format": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                               "model": "x", "timeout": "120s"}}
        with edged(models, {"memory": "2GiB"}) as (sock, _pid):
            body = {"messages": PROMPT, "max_tokens": TOKENS, "temperature": 0, "seed": 1}
            # A fresh connection per request on both sides: llama_cpp.server closes its
            # streams' connections.
            def direct_conn() -> http.client.HTTPConnection:
                return http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            stream(direct_conn(), {**body, "model": "x"}, "/v1/chat/completions")  # warm
            direct, through = [], []
            for _ in range(runs):
                direct.append(stream(direct_conn(), {**body, "model": "x"},
                                     "/v1/chat/completions"))
                through.append(stream(Unix(sock), {**body, "model": "backroom"},
                                      "/v1/chat/completions"))
            assert all(r["served_by"] == "backroom" for r in through), through
            print(f"overhead: {runs} runs of {TOKENS} tokens, llama_cpp.server {THREADS} "
                  f"threads (pieces: direct {direct[0]['pieces']}, edged "
                  f"{through[0]['pieces']})")
            for key in ("total", "ttft"):
                _line(f"edged -> remote, {key} (median)",
                      statistics.median(r[key] for r in through),
                      "straight to the server", statistics.median(r[key] for r in direct))


def failover(runs: int) -> None:
    """Each fallback-served request is paired with one straight to the local alias."""
    model = bundled_model()
    with llama_server(model, *SERVER_ARGS) as port:
        url = f"http://127.0.0.1:{port}/v1"
        remote = {"format": "openai", "base_url": url, "model": "x", "timeout": f"{TIMEOUT}s",
                  "fallback": "g", "breaker_failures": 2, "breaker_open": "1h"}
        models = {"g": bundled_alias(context=1024, threads=THREADS), "hung": remote,
                  "dead": dict(remote)}
        with edged(models, {"memory": "2GiB"}) as (sock, _pid):
            conn = Unix(sock)
            whole(conn, "g")  # load the fallback, as a box that served before would have
            pid = _server_pid(port)
            os.kill(pid, signal.SIGSTOP)
            hung = [(whole(conn, "hung"), whole(conn, "g")) for _ in range(2 + runs)]
            os.kill(pid, signal.SIGKILL)
            dead = [(whole(conn, "dead"), whole(conn, "g")) for _ in range(2 + runs)]
            served = [r for pair in hung + dead for r in pair]
            assert all(r["served_by"] == "g" and r["status"] == 200 for r in served), served
            print(f"failover: fallback 'g' (bundled model, 16 tokens, {THREADS} threads), "
                  f"remote timeout {TIMEOUT:g}s, breaker opens after 2 failures")
            _pair("server killed: first request", dead[:1])
            _pair("server killed: breaker open (median)", dead[2:])
            _pair("server hung: first request", hung[:1], extra=TIMEOUT)
            _pair("server hung: breaker open (median)", hung[2:])


def _pair(name: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]],
          extra: float = 0.0) -> None:
    value = statistics.median(p[0]["seconds"] for p in pairs)
    ref = statistics.median(p[1]["seconds"] for p in pairs) + extra
    _line(name, value, "local direct" + (f" + {extra:g}s" if extra else ""), ref)


def _server_pid(port: int) -> int:
    """The llama_cpp.server listening on ``port`` (a child of this process)."""
    import psutil
    for proc in psutil.Process().children(recursive=True):
        if any(c.laddr and c.laddr.port == port for c in proc.net_connections("tcp")):
            return int(proc.pid)
    raise RuntimeError(f"no child listens on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", default="all", choices=("overhead", "failover", "all"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.part in ("overhead", "all"):
        overhead(args.runs)
    if args.part in ("failover", "all"):
        failover(args.runs)


if __name__ == "__main__":
    main()
