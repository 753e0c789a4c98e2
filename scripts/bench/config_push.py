#!/usr/bin/env python3
"""Config pushes: how long a box takes to admit and to apply a signed bundle.

Admit = parse, Ed25519 verify, selector/version checks, full config validation, path checks.
Apply = admit + write v{N}.toml/.bundle and the pointer durably (3 fsynced renames) + two
history rows (SQLite, synchronous=FULL) + confirming after a zero-length health window (a 4th
fsynced rename of the pointer).
Reference, in the same run on the same disk: writing the same files with the same fsyncs and
renames and nothing else, so the ratio says what verification and bookkeeping cost on top.

    .venv/bin/python scripts/bench/config_push.py [--pushes 100] [--json]
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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edged.config import parse_toml_text  # noqa: E402
from edged.remote.bundle import encode_bundle, sign_bundle  # noqa: E402
from edged.remote.component import RemoteComponent  # noqa: E402
from edged.store import Store  # noqa: E402

DOC = """[budget]
memory = "{memory}MiB"

[remote]
health_window = 0

[agents]
session_ttl = "1h"
"""


def local_config(state: Path) -> str:
    return (f'[daemon]\nstate_dir = "{state}"\ndevice_id = "bench-box"\n\n'
            + DOC.format(memory=512))


async def apply_all(state: Path, bundles: list[bytes]) -> dict[str, float]:
    cfg = parse_toml_text(local_config(state), source=state.parent / "edged.toml")
    async with Store(state / "edged.db", [RemoteComponent.schema]) as store:
        remote = RemoteComponent(cfg, store, targets=[], health={})
        started = time.perf_counter()
        for raw in bundles:
            await remote.manager.apply(raw, source="api", actor="bench", wait=True)
        total = time.perf_counter() - started
    return {"apply_ms": total / len(bundles) * 1000}


def reference(folder: Path, bundles: list[bytes]) -> float:
    folder.mkdir(parents=True)
    started = time.perf_counter()
    for i, raw in enumerate(bundles):
        for name in (f"v{i}.bundle", f"v{i}.toml", "current"):
            tmp = folder / (name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, raw)
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp, folder / name)
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dfd)
            os.close(dfd)
    return (time.perf_counter() - started) / len(bundles) * 1000


def admit_only(state: Path, bundles: list[bytes]) -> float:
    """Verify + validate, in process (what a refusal costs: nothing is written)."""
    from edged.remote.admission import build_config, check_paths
    from edged.remote.bundle import FleetKeys, parse_bundle

    cfg = parse_toml_text(local_config(state), source=state.parent / "edged.toml")
    keys = FleetKeys(state / "keys" / "fleet")
    started = time.perf_counter()
    for raw in bundles:
        b = parse_bundle(raw)
        keys.verify(b)
        check_paths(build_config(b.config, cfg, state / "config" / "x.toml"), cfg)
    return (time.perf_counter() - started) / len(bundles) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pushes", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edged-bench-"))
    try:
        state = tmp / "st"
        key = Ed25519PrivateKey.generate()
        (state / "keys" / "fleet").mkdir(parents=True)
        (state / "keys" / "fleet" / "k.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        bundles = [encode_bundle(sign_bundle(key, version=v, config=DOC.format(memory=512 + v),
                                             devices=("bench-box",), tags=()))
                   for v in range(1, args.pushes + 1)]
        figures: dict[str, Any] = {"pushes": args.pushes, "bundle_bytes": len(bundles[0])}
        figures["admit_ms"] = admit_only(state, bundles)
        figures.update(asyncio.run(apply_all(state, bundles)))
        figures["reference_ms"] = reference(tmp / "ref", bundles)
        figures["apply_vs_reference"] = figures["apply_ms"] / figures["reference_ms"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"bundle {figures['bundle_bytes']} bytes, {args.pushes} pushes")
    print(f"admit (verify + validate):       {figures['admit_ms']:.2f} ms per bundle")
    print(f"apply (admit + durable + confirm): {figures['apply_ms']:.2f} ms per bundle")
    print(f"reference (same fsyncs, nothing else): {figures['reference_ms']:.2f} ms "
          f"-> apply is {figures['apply_vs_reference']:.1f}x the bare disk work")


if __name__ == "__main__":
    main()
