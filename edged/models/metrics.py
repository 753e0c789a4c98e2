"""The model manager's metric families, declared on the daemon's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edged.metrics import LATENCY_BUCKETS
from edged.models.budget import Ledger

_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ModelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.load_seconds = Histogram("edged_model_load_seconds", "time to load a model",
                                      ["model"], buckets=_LOAD_BUCKETS, registry=registry)
        self.tokens_per_second = Histogram(
            "edged_model_decode_tokens_per_second", "decode speed per request", ["model"],
            buckets=_RATE_BUCKETS, registry=registry)
        self.ttft = Histogram("edged_model_ttft_seconds", "time from start to the first token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter("edged_model_tokens", "tokens generated", ["model"],
                              registry=registry)
        self.queue_depth = Gauge("edged_model_queue_depth", "requests waiting or running",
                                 ["model"], registry=registry)
        self.queue_wait = Histogram("edged_model_queue_wait_seconds",
                                    "time a request waited before its model ran it", ["model"],
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.evictions = Counter("edged_model_evictions", "models unloaded, by reason",
                                 ["model", "reason"], registry=registry)
        self.refusals = Counter("edged_model_refusals", "requests refused (queue full, budget)",
                                ["model", "reason"], registry=registry)
        self.loaded = Gauge("edged_model_loaded", "1 while the model is loaded", ["model"],
                            registry=registry)
        self.budget = Gauge("edged_budget_bytes", "the memory budget for models",
                            registry=registry)
        self.budget_used = Gauge("edged_budget_used_bytes", "bytes accounted to loaded models",
                                 registry=registry)
        self.budget_free = Gauge("edged_budget_free_bytes", "budget left for more models",
                                 registry=registry)

    def show_budget(self, ledger: Ledger) -> None:
        self.budget.set(ledger.total)
        self.budget_used.set(ledger.used())
        self.budget_free.set(ledger.free())
