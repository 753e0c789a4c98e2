"""Counters and histograms: one registry per daemon, served on /metrics.

The registry is built by the composition root and handed to each component, which
declares its own families on it. The sync component reads the same registry to build
OTLP rollups, so a figure is defined once and leaves the box the same way everywhere.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "edged_http_requests", "API requests by route and status",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "edged_http_request_seconds", "API request latency by route",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.up = Gauge("edged_up", "1 while the daemon serves", registry=self.registry)
        self.in_flight = Gauge("edged_http_requests_in_flight",
                               "API requests being handled now (drain waits for 0)",
                               registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
