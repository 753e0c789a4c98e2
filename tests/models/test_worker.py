"""The per-model worker thread: priority order, deadlines, cancellation, on a real model."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edged.errors import Unavailable
from edged.models.config import ModelSpec
from edged.models.contract import PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_NORMAL
from edged.models.llama_backend import LlamaBackend
from edged.models.worker import Worker


def spec(path: Path) -> ModelSpec:
    return ModelSpec(alias="g", format="gguf", path=path, package=None, sha256=None,
                     context=256, threads=1, chat_format="gemma-base", variants=(),
                     embedding=False, kind="chat")


async def test_priority_deadline_and_cancel(bundled_model_path: Path) -> None:
    worker = Worker("g", asyncio.get_running_loop())
    await worker.start(lambda: LlamaBackend().load(spec(bundled_model_path),
                                                   bundled_model_path, 1),
                       lambda m: m.close())
    gate = threading.Event()
    order: list[str] = []

    def job(name: str) -> Any:
        return lambda _model: order.append(name)

    running = threading.Event()

    def block(_model: Any) -> None:
        running.set()
        gate.wait(60)

    blocker = worker.submit(block, PRIORITY_NORMAL, None)
    await asyncio.to_thread(running.wait, 60)  # the worker is busy from here on
    low = worker.submit(job("low"), PRIORITY_LOW, None)
    normal = worker.submit(job("normal"), PRIORITY_NORMAL, None)
    high = worker.submit(job("high"), PRIORITY_HIGH, None)
    late = worker.submit(job("late"), PRIORITY_HIGH, time.monotonic() - 1)
    dropped = worker.submit(job("dropped"), PRIORITY_HIGH, None)
    dropped.cancel.set()
    assert worker.depth() == 5  # all queued behind the blocker
    gate.set()
    await asyncio.gather(blocker.future, low.future, normal.future, high.future)
    assert order == ["high", "normal", "low"]
    with pytest.raises(Unavailable, match="passed its deadline"):
        await late.future
    assert dropped.future.cancelled()
    await worker.stop()
