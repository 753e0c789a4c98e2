"""Run one real apply (edged's own code, real SQLite, real files) and SIGKILL this process
at the N-th file open or rename, so a test can crash an apply at every step.

    python -m tests.remote.apply_child CONFIG BUNDLE N    (N = 0: never)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from edged.config import load_config
from edged.remote.component import RemoteComponent
from edged.remote.versions import load_active
from edged.store import Store

# os.open and open() raise "open"; os.replace and os.rename raise "os.rename".
KILL_EVENTS = ("open", "os.rename")


def arm(kill_at: int) -> None:
    count = 0

    def hook(event: str, args: tuple[Any, ...]) -> None:
        nonlocal count
        if event in KILL_EVENTS:
            count += 1
            if count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


async def apply(config: Path, raw: bytes, kill_at: int) -> None:
    cfg = load_active(load_config(config))
    async with Store(cfg.daemon.state_dir / "edged.db", [RemoteComponent.schema]) as store:
        component = RemoteComponent(cfg, store, targets=[], health={})
        if kill_at:
            arm(kill_at)
        result = await component.manager.apply(raw, source="api", actor="test")
    print("applied", result["version"], flush=True)


if __name__ == "__main__":
    asyncio.run(apply(Path(sys.argv[1]), Path(sys.argv[2]).read_bytes(), int(sys.argv[3])))
