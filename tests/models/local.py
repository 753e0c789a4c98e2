"""The manager's parts in this process over the bundled model: a parsed ``[models]`` /
``[budget]`` / ``[power]`` config, a ``Residency`` on it, and its ``run()`` (which unloads
everything at the end). For unit tests of residency, admission and jobs; the daemon-level
tests (test_manager.py, test_queue.py) drive the same parts through the socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from edged.audit.sink import AuditSink
from edged.models.catalog import Catalog
from edged.models.config import ModelsConfig, ModelSpec, parse_models
from edged.models.llama_backend import LlamaBackend
from edged.models.load_cost import estimate
from edged.models.metrics import ModelMetrics
from edged.models.power import PowerMonitor
from edged.models.residency import Residency
from edged.models.resident import Resident
from edged.tomlreader import Table
from tests.edgedtest import MODEL_CACHE

MiB = 1024 * 1024


def models_config(state: Path, models: dict[str, Any], *, budget: dict[str, Any] | None = None,
                  power: dict[str, Any] | None = None) -> ModelsConfig:
    return parse_models(Table({"models": {"cache_dir": str(MODEL_CACHE), **models},
                               "budget": dict(budget or {}), "power": dict(power or {})}),
                        state)


def bundled_spec(path: Path, **over: Any) -> ModelSpec:
    fields: dict[str, Any] = {
        "alias": "g", "format": "gguf", "path": path, "package": None, "sha256": None,
        "context": 512, "threads": 1, "chat_format": "gemma-base", "variants": (),
        "embedding": False, "kind": "chat", "parallel": 1}
    return ModelSpec(**{**fields, **over})


class Parts:
    """A residency with its metrics on a registry of its own."""

    def __init__(self, cfg: ModelsConfig, *, budget_bytes: int | None = None,
                 audit: AuditSink | None = None, power: PowerMonitor | None = None) -> None:
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self.metrics = ModelMetrics(self.registry)
        self.residency = Residency(
            cfg, catalog=Catalog(cfg), backends={"gguf": LlamaBackend()}, metrics=self.metrics,
            budget_bytes=budget_bytes or cfg.budget.memory_bytes or 2 << 30, audit=audit,
            power=power)

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def running(residency: Residency) -> AsyncIterator[Residency]:
    """``residency.run()`` for the test's length: power changes reach the idle timers, and
    every model is unloaded (its worker thread ended) when the test leaves."""
    task = asyncio.create_task(residency.run())
    try:
        yield residency
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def load(r: Residency, alias: str, within: float = 120) -> Resident:
    """Load ``alias`` as a request would (held while loading), then let it go idle."""
    slot = r.resident(alias)
    r.hold(slot)
    try:
        await r.ensure_loaded(slot, asyncio.get_running_loop().time() + within)
    finally:
        r.release(slot)
    return slot


async def until(r: Residency, done: Callable[[], bool]) -> None:
    """Wait on the residency's change notices (no sleeps) until ``done()`` is true."""
    async with asyncio.timeout(60):
        while not done():
            await r.wait_change(r.ps()["generation"])


def whole_cost(bundled: Path, **over: object) -> int:
    """What loading one alias alone costs by the estimate: its own bytes, the weights, the
    runtime's heap."""
    own, shared = estimate(LlamaBackend(), bundled_spec(bundled, **over), bundled, 1)
    return own + sum(shared.values())
