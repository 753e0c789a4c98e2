"""Metric rollups: the daemon's Prometheus registry -> one OTLP ExportMetricsServiceRequest.

The same families served on /metrics leave the box in OTLP/HTTP protobuf, so an
OpenTelemetry Collector can take them unchanged. Counters become cumulative monotonic
sums, gauges gauges, histograms cumulative explicit-bucket histograms (Prometheus buckets
are cumulative, OTLP bucket counts are not), summaries summaries.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    SummaryDataPoint,
)
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric as PromMetric
from prometheus_client.samples import Sample

from edged import __version__
from edged.sync.queue import METRICS, OutboxQueue

# The resource attribute that carries the rollup's idempotency key: OTLP itself has none,
# so a backend that wants exactly-once dedupes on it.
KEY_ATTRIBUTE = "edged.rollup.key"


def attributes(labels: Mapping[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=str(v)))
            for k, v in sorted(labels.items())]


def build_rollup(registry: CollectorRegistry, *, device_id: str, key: str,
                 start_ns: int, now_ns: int | None = None) -> ExportMetricsServiceRequest:
    now_ns = now_ns if now_ns is not None else time.time_ns()
    scope = ScopeMetrics(scope=InstrumentationScope(name="edged", version=__version__))
    for family in registry.collect():
        metric = convert(family, start_ns, now_ns)
        if metric is not None:
            scope.metrics.append(metric)
    resource = attributes({"service.name": "edged", "service.version": __version__,
                           "service.instance.id": device_id, "host.name": device_id,
                           KEY_ATTRIBUTE: key})
    rm = ResourceMetrics(scope_metrics=[scope])
    rm.resource.attributes.extend(resource)
    return ExportMetricsServiceRequest(resource_metrics=[rm])


def convert(family: PromMetric, start_ns: int, now_ns: int) -> Metric | None:
    metric = Metric(name=family.name, description=family.documentation, unit=family.unit)
    if family.type == "counter":
        metric.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
        metric.sum.is_monotonic = True
        metric.sum.data_points.extend(_numbers(family.samples, ("_total", ""), start_ns, now_ns))
    elif family.type in ("gauge", "unknown", "info", "stateset"):
        metric.gauge.data_points.extend(_numbers(family.samples, ("",), start_ns, now_ns))
    elif family.type == "histogram":
        metric.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
        metric.histogram.data_points.extend(
            h.point(start_ns, now_ns) for h in _group(family.name, family.samples).values())
    elif family.type == "summary":
        metric.summary.data_points.extend(
            h.summary(start_ns, now_ns) for h in _group(family.name, family.samples).values())
    else:
        return None
    return metric if _has_points(metric) else None


def _has_points(metric: Metric) -> bool:
    kind = metric.WhichOneof("data")
    return kind is not None and len(getattr(metric, kind).data_points) > 0


def _numbers(samples: Iterable[Sample], suffixes: tuple[str, ...], start_ns: int,
             now_ns: int) -> list[NumberDataPoint]:
    points = []
    for s in samples:
        if s.name.endswith("_created") or not any(s.name.endswith(x) for x in suffixes):
            continue
        if math.isnan(s.value):
            continue
        p = NumberDataPoint(start_time_unix_nano=start_ns, time_unix_nano=now_ns,
                            as_double=float(s.value))
        p.attributes.extend(attributes(s.labels))
        points.append(p)
    return points


@dataclass
class _Series:
    """One labelled series of a histogram or summary, gathered from its samples."""

    labels: dict[str, str]
    buckets: list[tuple[float, float]] = field(default_factory=list)  # (le, cumulative)
    quantiles: list[tuple[float, float]] = field(default_factory=list)
    count: float = 0.0
    total: float = 0.0

    def point(self, start_ns: int, now_ns: int) -> HistogramDataPoint:
        ordered = sorted(self.buckets)
        bounds = [le for le, _ in ordered if not math.isinf(le)]
        cumulative = [c for _, c in ordered]
        counts = [int(c - prev) for c, prev in zip(cumulative, [0.0, *cumulative], strict=False)]
        if len(counts) == len(bounds):  # no +Inf bucket: the remainder is above the last bound
            counts.append(int(self.count - (cumulative[-1] if cumulative else 0)))
        p = HistogramDataPoint(start_time_unix_nano=start_ns, time_unix_nano=now_ns,
                               count=int(self.count), sum=self.total,
                               explicit_bounds=bounds, bucket_counts=counts)
        p.attributes.extend(attributes(self.labels))
        return p

    def summary(self, start_ns: int, now_ns: int) -> SummaryDataPoint:
        p = SummaryDataPoint(start_time_unix_nano=start_ns, time_unix_nano=now_ns,
                             count=int(self.count), sum=self.total)
        for q, v in sorted(self.quantiles):
            p.quantile_values.add(quantile=q, value=v)
        p.attributes.extend(attributes(self.labels))
        return p


def _group(name: str, samples: Iterable[Sample]) -> dict[tuple[tuple[str, str], ...], _Series]:
    series: dict[tuple[tuple[str, str], ...], _Series] = {}
    for s in samples:
        labels = {k: v for k, v in s.labels.items() if k not in ("le", "quantile")}
        one = series.setdefault(tuple(sorted(labels.items())), _Series(labels))
        suffix = s.name[len(name):]
        if suffix == "_bucket":
            one.buckets.append((float(s.labels["le"]), s.value))
        elif suffix == "_count":
            one.count = s.value
        elif suffix == "_sum":
            one.total = s.value
        elif suffix == "" and "quantile" in s.labels:
            one.quantiles.append((float(s.labels["quantile"]), s.value))
    return series


class Rollups:
    """Every ``sync.rollup_interval``, queue one rollup of the whole registry."""

    def __init__(self, interval: float, registry: CollectorRegistry, outbox: OutboxQueue, *,
                 device_id: str, start_ns: int | None = None) -> None:
        self._interval = interval
        self._registry = registry
        self._outbox = outbox
        self._device_id = device_id
        # When the cumulative counters started: the process start, not a config reload.
        self._start_ns = start_ns if start_ns is not None else time.time_ns()

    async def run(self) -> None:
        if self._interval <= 0:
            return
        while True:
            await asyncio.sleep(self._interval)
            await self.queue_one()

    async def queue_one(self) -> str:
        now_ns = time.time_ns()
        key = f"rollup:{self._device_id}:{now_ns}"
        # Collecting reads /proc (process collector): off the loop.
        request = await asyncio.to_thread(build_rollup, self._registry, device_id=self._device_id,
                                          key=key, start_ns=self._start_ns, now_ns=now_ns)
        await self._outbox.enqueue(METRICS, key, request.SerializeToString())
        return key
