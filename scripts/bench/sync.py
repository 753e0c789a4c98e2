#!/usr/bin/env python3
"""Sync: what queueing a ticket costs, and how fast a backlog drains to the cloud.

Targets (issue 6): drain 100,000 queued rows in <= 20 s, with 0 lost and 0 duplicated after
dedupe. References, measured in the same run on the same disk and loopback:
- enqueue: a plain sqlite3 INSERT + COMMIT loop with the same pragmas (WAL, synchronous=FULL),
  one transaction per row, like the outbox's own;
- drain: a raw aiohttp POST loop sending the same number of already-encoded gzip batches to
  the same cloud, with no SQLite reads, acks or deletes.
The local cloud runs in its own process (a real backend is another machine), dedupes by key,
and reports what it stored.

    .venv/bin/python scripts/bench/sync.py [--rows 100000] [--enqueue 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edged.store import Store  # noqa: E402
from edged.sync.cloud import Cloud  # noqa: E402
from edged.sync.config import parse_sync  # noqa: E402
from edged.sync.contract import encode_batch  # noqa: E402
from edged.sync.outbox import SCHEMA, Outbox  # noqa: E402
from edged.sync.queue import TICKET  # noqa: E402
from edged.sync.uploader import Uploader  # noqa: E402
from edged.tomlreader import Table  # noqa: E402

DRAIN_TARGET_S = 20.0


def ticket(i: int) -> dict[str, Any]:
    return {"subject": f"customer asks for size 42 of sku A-{i:06}", "store": "berlin-3",
            "priority": "normal", "agent": "kiosk", "session": f"s-{i // 7:06}"}


# -- the local cloud (own process)

def serve_cloud(port: int) -> None:
    stored: set[str] = set()
    received = 0

    async def tickets(request: web.Request) -> web.Response:
        nonlocal received
        doc = json.loads(await request.read())
        keys = [item["key"] for item in doc["tickets"]]
        received += len(keys)
        stored.update(keys)
        return web.json_response({"accepted": keys})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"stored": len(stored), "received": received})

    async def reset(request: web.Request) -> web.Response:
        nonlocal received
        stored.clear()
        received = 0
        return web.json_response({})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/tickets", tickets)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def cloud_call(url: str, method: str, path: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, url + path) as r:
        result: dict[str, Any] = await r.json()
        return result


async def wait_for_cloud(url: str) -> None:
    for _ in range(200):
        try:
            await cloud_call(url, "GET", "/stats")
            return
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)  # startup of the cloud process: a bench, not a test
    raise RuntimeError("the local cloud did not start")


# -- enqueue cost

async def enqueue_cost(folder: Path, n: int) -> dict[str, float]:
    async with Store(folder / "enq.db", [SCHEMA]) as store:
        outbox = Outbox(store, 1 << 30, CollectorRegistry())
        started = time.perf_counter()
        for i in range(n):
            await outbox.enqueue(TICKET, f"enq-{i}", ticket(i))
        edged_s = time.perf_counter() - started
    raw_s = await asyncio.to_thread(raw_insert_loop, folder / "raw.db", n)
    return {"edged_ms_per_ticket": edged_s / n * 1000, "raw_ms_per_ticket": raw_s / n * 1000,
            "ratio": edged_s / raw_s}


def raw_insert_loop(path: Path, n: int) -> float:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, key TEXT UNIQUE, payload BLOB)")
    started = time.perf_counter()
    for i in range(n):
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO t (key, payload) VALUES (?, ?)",
                    (f"raw-{i}", json.dumps(ticket(i)).encode()))
        con.execute("COMMIT")
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


# -- drain

async def fill(outbox: Outbox, store: Store, rows: int) -> list[str]:
    keys = [f"ticket-{i:07}" for i in range(rows)]
    for start in range(0, rows, 10_000):
        async with store.transaction() as db:
            for i in range(start, min(rows, start + 10_000)):
                await outbox.enqueue_in(db, TICKET, keys[i], ticket(i))
    return keys


async def drain(folder: Path, url: str, rows: int) -> dict[str, Any]:
    cfg = parse_sync(Table({"endpoint": url}, "sync"))
    registry = CollectorRegistry()
    async with Store(folder / "drain.db", [SCHEMA]) as store, Cloud(
            url, device_id="bench", token_file=folder / "none", ca_file=None,
            connect_timeout=cfg.connect_timeout, request_timeout=cfg.request_timeout) as cloud:
        outbox = Outbox(store, 1 << 33, registry)
        started = time.perf_counter()
        await fill(outbox, store, rows)
        fill_s = time.perf_counter() - started
        batches = [await outbox.batch(TICKET, cfg.batch_rows, cfg.batch_bytes)]
        uploader = Uploader(cfg, outbox, cloud, device_id="bench", registry=registry, audit=None)
        started = time.perf_counter()
        result = await uploader.drain()
        edged_s = time.perf_counter() - started
        left = sum((await outbox.refresh()).rows.values())
    stats = await cloud_call(url, "GET", "/stats")
    raw_s = await raw_post_loop(url, batches[0], rows // len(batches[0]))
    return {"rows": rows, "fill_us_per_row": fill_s / rows * 1e6, "seconds": edged_s,
            "rows_per_s": rows / edged_s,
            "batch_rows": cfg.batch_rows, "error": result.error, "left_queued": left,
            "cloud_stored": stats["stored"], "lost": rows - stats["stored"],
            "duplicated": stats["received"] - stats["stored"],
            "raw_post_seconds": raw_s, "ratio_vs_raw_post": edged_s / raw_s,
            "meets_target": edged_s <= DRAIN_TARGET_S and stats["stored"] == rows}


async def raw_post_loop(url: str, batch: list[Any], count: int) -> float:
    await cloud_call(url, "POST", "/reset")
    body = encode_batch(TICKET, batch, "bench").body
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with aiohttp.ClientSession() as s:
        started = time.perf_counter()
        for _ in range(count):
            async with s.post(url + "/v1/tickets", data=body, headers=headers) as r:
                await r.read()
        return time.perf_counter() - started


async def main_async(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = multiprocessing.get_context("spawn").Process(target=serve_cloud, args=(port,),
                                                          daemon=True)
    proc.start()
    try:
        await wait_for_cloud(url)
        return {"enqueue": await enqueue_cost(folder, args.enqueue),
                "drain": await drain(folder, url, args.rows)}
    finally:
        proc.terminate()
        proc.join(10)


def render(r: dict[str, Any]) -> str:
    e, d = r["enqueue"], r["drain"]
    return "\n".join([
        f"enqueue (own transaction, synchronous=FULL): {e['edged_ms_per_ticket']:.3f} ms/ticket"
        f"  raw sqlite3 loop: {e['raw_ms_per_ticket']:.3f} ms  ratio {e['ratio']:.2f}x",
        f"enqueue_in, 10,000 rows per caller transaction: {d['fill_us_per_row']:.0f} us/row",
        f"drain {d['rows']} rows in batches of {d['batch_rows']}: {d['seconds']:.2f} s "
        f"({d['rows_per_s']:.0f} rows/s; target <= {DRAIN_TARGET_S:.0f} s)",
        f"  raw aiohttp POST loop, same batches: {d['raw_post_seconds']:.2f} s  "
        f"ratio {d['ratio_vs_raw_post']:.2f}x",
        f"  cloud stored {d['cloud_stored']}: lost {d['lost']}, duplicated {d['duplicated']}, "
        f"left queued {d['left_queued']}, error {d['error']}",
        f"  {'MEETS' if d['meets_target'] else 'MISSES'} the target",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--enqueue", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="edged-bench-sync-"))
    try:
        result = asyncio.run(main_async(args, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0 if result["drain"]["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
