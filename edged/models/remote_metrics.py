"""Metric families of the remote aliases, declared on the daemon's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edged.metrics import LATENCY_BUCKETS


class RemoteMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter("edged_remote_calls", "calls to remote aliases, by outcome",
                             ["model", "outcome"], registry=registry)
        self.latency = Histogram(
            "edged_remote_seconds", "time of a good remote call (streams: to the first token)",
            ["model", "route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.fallbacks = Counter("edged_remote_fallbacks",
                                 "requests for a remote alias served by its fallback",
                                 ["model", "reason"], registry=registry)
        self.served = Counter("edged_served", "requests for a remote alias by who served them",
                              ["model", "served_by"], registry=registry)
        self.breaker = Gauge("edged_remote_breaker_state",
                             "circuit breaker: 0 closed, 1 half-open, 2 open", ["model"],
                             registry=registry)
        self.reachable = Gauge("edged_remote_reachable",
                               "1 if the last call reached the server, 0 if it failed",
                               ["model"], registry=registry)
        self.bytes_sent = Counter("edged_remote_sent_bytes", "request bytes sent off the box",
                                  ["model"], registry=registry)
        self.redactions = Counter("edged_remote_redactions",
                                  "texts masked before leaving the box, by pattern",
                                  ["model", "pattern"], registry=registry)
