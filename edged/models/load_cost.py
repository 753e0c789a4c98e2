"""What a load costs, and the blocking calls that decide and measure it.

Before a load: its own bytes and the shared costs (a file's mmapped weights, a runtime's
heap) from the file's metadata, and how many sequences it decodes together. During it:
the RSS delta, so the real cost replaces the estimate next time. Every function here
blocks (file reads, the load itself) and runs on a thread, never on the event loop.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psutil

from edged.models.backend import Backend, LoadedModel
from edged.models.budget import Shared
from edged.models.config import ModelSpec
from edged.models.memory import trim_heap

DEFAULT_PARALLEL = 8  # llama-server's -np on a box like this; more adds little on 2 cores


def estimate(backend: Backend, spec: ModelSpec, path: Path, threads: int
             ) -> tuple[int, Shared]:
    """(own bytes, shared costs) of a load. A backend without ``shared_costs`` (ONNX: no
    mmapped weights) has none."""
    shared_of = getattr(backend, "shared_costs", None)
    shared: Shared = dict(shared_of(path)) if shared_of is not None else {}
    return backend.estimate(spec, path, threads), shared


def sized(backend: Backend, spec: ModelSpec, path: Path, threads: int, budget: int
          ) -> ModelSpec:
    """``spec`` with its ``parallel`` decided. Only GGUF models batch; without a configured
    value, as many sequences (up to DEFAULT_PARALLEL) as keep the KV cache and logits of
    the extra ones within a quarter of the memory budget."""
    if spec.format != "gguf":
        return replace(spec, parallel=1)
    if spec.parallel is not None:
        return spec
    alone = backend.estimate(replace(spec, parallel=1), path, threads)
    for parallel in range(DEFAULT_PARALLEL, 1, -1):
        candidate = replace(spec, parallel=parallel)
        if backend.estimate(candidate, path, threads) - alone <= budget // 4:
            return candidate
    return replace(spec, parallel=1)


def mappings(backend: Backend, spec: ModelSpec) -> int:
    """How many times a load maps its file (its RSS delta holds the weights that often)."""
    count = getattr(backend, "mappings", None)
    return int(count(spec)) if count is not None else 1


def measured_load(backend: Backend, spec: ModelSpec, path: Path, threads: int
                  ) -> tuple[LoadedModel, int]:
    """Runs on the model's worker thread; loads are serial, so the RSS delta is this load.

    RSS, not PSS: every load maps its file afresh, so its RSS delta is always the weights
    plus its own bytes, and the own part is the delta minus the (known) weights. PSS would
    split the weights with every other process mapping the file (a second daemon, a
    benchmark) and hide them. RSS is also cheap to read (statm, not smaps). No trim first:
    every unload already ended with one. The backend's library is imported first: it is
    paid once per process, not by the first model that happens to load."""
    warm_up = getattr(backend, "warm_up", None)
    if warm_up is not None:
        warm_up()
    before = psutil.Process().memory_info().rss
    model = backend.load(spec, path, threads)
    return model, psutil.Process().memory_info().rss - before


def close_model(model: LoadedModel) -> None:
    model.close()
    trim_heap()  # llama.cpp leaves 60-100 MiB in the C heap until trimmed
