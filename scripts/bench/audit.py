#!/usr/bin/env python3
"""Audit log: durable appends per second with group commit, and verify speed.

Targets (issue 5): >= 20,000 durable appends/s; verify >= 100,000 records/s. The reference,
measured in the same run on the same disk: a raw append of unencrypted JSON lines with one
fdatasync per batch, batches as large as the ones group commit formed. The ratio says what
encryption, chaining and the asyncio hand-off cost on top of the bare disk.

    .venv/bin/python scripts/bench/audit.py [--writers 256] [--records 100000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edged.audit.config import AuditConfig  # noqa: E402
from edged.audit.frames import list_segments  # noqa: E402
from edged.audit.keys import init_keys, load_keys  # noqa: E402
from edged.audit.log import AuditLog  # noqa: E402
from edged.audit.verify import verify  # noqa: E402

APPEND_TARGET = 20_000
VERIFY_TARGET = 100_000
EVENT = {"method": "GET", "route": "/v1/chat/completions", "status": 200, "uid": 1000,
         "duration_ms": 12.5, "model": "gemma3-270m", "request_id": "r-0123456789"}


def config() -> AuditConfig:
    return AuditConfig(enabled=True, segment_bytes=16 * 1024 * 1024, checkpoint_every=1000,
                       checkpoint_interval=300.0, log_prompts=False, create_keys=False)


async def group_commit(folder: Path, writers: int, records: int) -> dict[str, float]:
    registry = CollectorRegistry()
    keys = load_keys(folder / "keys")
    per_writer = records // writers

    async def writer(log: AuditLog, w: int) -> None:
        for i in range(per_writer):
            await log.append("api.request", f"uid:{1000 + w}", {**EVENT, "i": i})

    async with AuditLog(config(), folder / "audit", keys, device_id="bench",
                        registry=registry) as log:
        started = time.perf_counter()
        await asyncio.gather(*(writer(log, w) for w in range(writers)))
        elapsed = time.perf_counter() - started
    appends = registry.get_sample_value("edged_audit_appends_total") or 0.0
    commits = registry.get_sample_value("edged_audit_commits_total") or 1.0
    return {"records": per_writer * writers, "seconds": elapsed,
            "per_s": per_writer * writers / elapsed, "mean_batch": appends / commits}


async def reopen(folder: Path) -> dict[str, float]:
    """Opening the log again: the last segment is read and every frame authenticated."""
    keys = load_keys(folder / "keys")
    log = AuditLog(config(), folder / "audit", keys, device_id="bench")
    started = time.perf_counter()
    await log.__aenter__()
    elapsed = time.perf_counter() - started
    await log.__aexit__(None, None, None)
    _, last = list_segments(folder / "audit")[-1]
    return {"seconds": elapsed, "last_segment_bytes": last.stat().st_size}


def raw_append(path: Path, records: int, batch: int) -> dict[str, float]:
    """Unencrypted JSON lines, one write + one fdatasync per batch: the bare disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    started = time.perf_counter()
    try:
        done = 0
        while done < records:
            n = min(batch, records - done)
            lines = [json.dumps({"seq": done + k, "kind": "api.request", "actor": "uid:1000",
                                 "data": {**EVENT, "i": done + k}}) for k in range(n)]
            os.write(fd, ("\n".join(lines) + "\n").encode())
            os.fdatasync(fd)
            done += n
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    return {"records": records, "seconds": elapsed, "per_s": records / elapsed}


def verify_speed(folder: Path) -> dict[str, float]:
    keys = load_keys(folder / "keys", need_device=False)
    started = time.perf_counter()
    report = verify(folder / "audit", keys)
    elapsed = time.perf_counter() - started
    if not report.ok:
        raise SystemExit(f"verify failed: {report.first_bad}")
    return {"records": report.records, "seconds": elapsed, "per_s": report.records / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=256, help="concurrent appenders")
    parser.add_argument("--records", type=int, default=100_000, help="records to append")
    parser.add_argument("--dir", help="scratch folder (default: a temp folder under ./var, "
                                      "the disk the daemon uses)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = Path(args.dir) if args.dir else REPO / "var"
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=base))
    try:
        init_keys(folder / "keys")
        audit = asyncio.run(group_commit(folder, args.writers, args.records))
        raw = raw_append(folder / "raw.jsonl", int(audit["records"]),
                         max(1, round(audit["mean_batch"])))
        opened = asyncio.run(reopen(folder))
        check = verify_speed(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result: dict[str, Any] = {"group_commit": audit, "raw_fsync_per_batch": raw,
                              "verify": check, "reopen": opened,
                              "ratio_vs_raw": audit["per_s"] / raw["per_s"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"durable appends, group commit ({args.writers} writers): {audit['per_s']:,.0f}/s "
          f"(mean batch {audit['mean_batch']:.0f}; target >= {APPEND_TARGET:,})")
    print(f"raw unencrypted append, fsync per batch of the same size: {raw['per_s']:,.0f}/s")
    print(f"ratio audit / raw: {result['ratio_vs_raw']:.2f}")
    print(f"verify: {check['per_s']:,.0f} records/s over {check['records']:,} records "
          f"(target >= {VERIFY_TARGET:,})")
    print(f"reopen (recovery scan of a {opened['last_segment_bytes'] / 2**20:.1f} MiB last "
          f"segment): {opened['seconds'] * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
