#!/usr/bin/env python3
"""Idle daemon: RSS with no model loaded, and CPU time over a quiet window.

Targets (issue 2): RSS <= 50 MiB; CPU close to zero (no polling loops). Starts the real
daemon (``python -X importtime -m edged serve``) on the shipped dev config in a scratch
state folder, waits for READY=1, samples it with psutil, then lists what it imported at
startup: the heavy modules that must stay lazy, and the costliest imports by time, with
the RSS each heavy module adds on its own in a fresh interpreter.

    .venv/bin/python scripts/bench/idle.py [--window 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
RSS_TARGET_MIB = 50
HEAVY = ("llama_cpp", "onnxruntime", "numpy", "cryptography", "gguf", "onnx", "psutil",
         "aiosqlite", "opentelemetry", "prometheus_client", "aiohttp", "sdnotify")
MUST_BE_LAZY = ("llama_cpp", "onnxruntime", "numpy", "cryptography")


def start(folder: Path) -> tuple[subprocess.Popen[bytes], Path]:
    notify_path = folder / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    log_path = folder / "daemon.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "edged", "serve",
             "--config", str(REPO / "config" / "edged.toml"),
             "--state-dir", str(folder / "state"), "--socket", str(folder / "s.sock")],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([notify], [], [], 1.0)
            if ready and b"READY=1" in notify.recv(4096):
                return proc, log_path
            if proc.poll() is not None:
                raise SystemExit(f"edged exited early:\n{log_path.read_text()[-3000:]}")
        raise SystemExit("edged was not ready within 120 s")
    finally:
        notify.close()


# The reference: the smallest daemon of the same kind, a bare aiohttp app on a Unix socket.
_REFERENCE = """
import asyncio, sys
from aiohttp import web
async def main():
    app = web.Application()
    app.router.add_get("/health", lambda r: web.json_response({"status": "ok"}))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, sys.argv[1]).start()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def reference_rss(folder: Path) -> float:
    proc = subprocess.Popen([sys.executable, "-c", _REFERENCE, str(folder / "ref.sock")],
                            stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise SystemExit("the reference server did not start")
        return psutil.Process(proc.pid).memory_info().rss / MIB
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def sample(pid: int, window: float) -> dict[str, float]:
    p = psutil.Process(pid)
    p.cpu_times()
    before = p.cpu_times()
    rss_ready = p.memory_info().rss
    time.sleep(window)  # the quiet window being measured, not a wait for readiness
    after = p.cpu_times()
    mem = p.memory_full_info()
    return {
        "rss_mib_at_ready": rss_ready / MIB,
        "rss_mib": mem.rss / MIB,
        "uss_mib": mem.uss / MIB,
        "threads": p.num_threads(),
        "cpu_s": (after.user - before.user) + (after.system - before.system),
        "window_s": window,
    }


_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_tree(log_text: str) -> list[tuple[str, int, int]]:
    """(module, cumulative us, depth) from -X importtime, in the order imports finished."""
    return [(m.group(4), int(m.group(2)), len(m.group(3)) // 2)
            for m in _IMPORT_LINE.finditer(log_text)]


def pulled_in_by(tree: list[tuple[str, int, int]], module: str) -> str:
    """The chain of edged modules that first imported ``module`` (children finish first)."""
    for i, (name, _, depth) in enumerate(tree):
        if name != module:
            continue
        chain = [name]
        for parent, _, d in tree[i + 1:]:
            if d < depth:
                chain.append(parent)
                depth = d
        return " <- ".join(c for c in chain if c.startswith("edged") or c == module)
    return ""


def rss_in_order(modules: list[str], heavy: list[str]) -> dict[str, float]:
    """RSS (MiB) each heavy package adds when the daemon's modules are imported in the
    daemon's own order in one fresh interpreter: what is shared is counted once, by whoever
    came first. The rest of the modules are charged to "other"."""
    code = ("import importlib, json, sys\n"
            "def rss():\n"
            "    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * 4096\n"
            f"heavy = {heavy!r}\n"
            "cost = dict.fromkeys(heavy + ['python', 'other'], 0)\n"
            "cost['python'] = rss()\n"
            "for m in sys.argv[1:]:\n"
            "    before = rss()\n"
            "    try: importlib.import_module(m)\n"
            "    except Exception: pass\n"
            "    top = m.split('.')[0]\n"
            "    cost[top if top in heavy else 'other'] += rss() - before\n"
            f"print(json.dumps({{k: v / {MIB} for k, v in cost.items()}}))\n")
    out = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    costs: dict[str, float] = json.loads(out.stdout)
    return costs


def report(window: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="edb-", dir="/tmp"))
    try:
        proc, log_path = start(folder)
        try:
            figures = sample(proc.pid, window)
        finally:
            proc.send_signal(signal.SIGTERM)
            figures["exit_code"] = proc.wait(60)
        tree = import_tree(log_path.read_text(errors="replace"))
        figures["reference_rss_mib"] = reference_rss(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    loaded = {name: us for name, us, _ in tree}
    heavy = {m: round(loaded[m] / 1000, 1) for m in HEAVY if m in loaded}
    figures["heavy_imports_ms"] = heavy
    # -X importtime lists a module when its import finishes; importing them in that order
    # rebuilds the daemon's start-up, one module at a time.
    order = [name for name, _, _ in tree if not name.startswith("_")]
    figures["imports_rss_mib"] = {k: round(v, 1) for k, v in
                                  rss_in_order(order, [*HEAVY, "edged"]).items()}
    figures["not_lazy"] = {m: pulled_in_by(tree, m) for m in MUST_BE_LAZY if m in loaded}
    top = sorted(((t, m) for m, t in loaded.items() if "." not in m), reverse=True)[:8]
    figures["top_imports_ms"] = {m: round(t / 1000, 1) for t, m in top}
    figures["rss_target_mib"] = RSS_TARGET_MIB
    return figures


def print_human(f: dict[str, Any]) -> None:
    verdict = "OK" if f["rss_mib"] <= RSS_TARGET_MIB else "OVER TARGET"
    print(f"idle edged, no model loaded (exit code {f['exit_code']})")
    print(f"  RSS at ready    {f['rss_mib_at_ready']:6.1f} MiB")
    print(f"  RSS after {f['window_s']:.0f}s   {f['rss_mib']:6.1f} MiB  (target <= "
          f"{RSS_TARGET_MIB} MiB: {verdict}; ratio {f['rss_mib'] / RSS_TARGET_MIB:.2f})")
    print(f"  USS             {f['uss_mib']:6.1f} MiB")
    print(f"  reference: bare aiohttp app on a Unix socket {f['reference_rss_mib']:.1f} MiB RSS "
          f"(ratio edged / reference {f['rss_mib'] / f['reference_rss_mib']:.2f})")
    print(f"  CPU over {f['window_s']:.0f}s    {f['cpu_s']:6.3f} s  "
          f"({100 * f['cpu_s'] / f['window_s']:.3f}% of one core), threads {f['threads']}")
    print("  must stay lazy, imported at startup:" + ("" if f["not_lazy"] else " none"))
    for m, chain in f["not_lazy"].items():
        print(f"    {m}: {chain}")
    print("  start-up imports replayed in order in a fresh interpreter: RSS each package adds")
    print("  (a dependency is charged to whoever imported it first), and its import time:")
    for m, mib in sorted(f["imports_rss_mib"].items(), key=lambda kv: -kv[1]):
        ms = f["heavy_imports_ms"].get(m)
        if ms is None and mib < 0.05 and m not in ("python", "other", "edged"):
            continue  # not imported at start-up
        print(f"    {m:20s} {mib:6.1f} MiB" + (f"  {ms:7.1f} ms" if ms is not None else ""))
    print("  costliest top-level imports: "
          + ", ".join(f"{m} {ms} ms" for m, ms in f["top_imports_ms"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0, help="quiet window, seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = report(args.window)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_human(figures)


if __name__ == "__main__":
    main()
