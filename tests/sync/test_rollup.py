"""Rollups: the Prometheus registry in OTLP protobuf, and their trip to /v1/metrics."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE, Metric

from edged.metrics import LATENCY_BUCKETS, Metrics
from edged.sync.queue import METRICS
from edged.sync.rollup import KEY_ATTRIBUTE, Rollups, build_rollup
from tests.sync.fakecloud import FakeCloud
from tests.sync.test_uploader import rig


def by_name(request: ExportMetricsServiceRequest) -> dict[str, Metric]:
    return {m.name: m for rm in request.resource_metrics for sm in rm.scope_metrics
            for m in sm.metrics}


def test_counters_gauges_and_histograms_map_to_otlp() -> None:
    m = Metrics()
    m.requests.labels("/v1/chat/completions", "POST", "200").inc(3)
    for seconds in (0.002, 0.02, 0.02, 200.0):
        m.latency.labels("/v1/chat/completions", "POST").observe(seconds)
    m.up.set(1)
    wire = build_rollup(m.registry, device_id="box", key="rollup:box:1", start_ns=10,
                        now_ns=20).SerializeToString()
    request = ExportMetricsServiceRequest.FromString(wire)
    attrs = {a.key: a.value.string_value for a in request.resource_metrics[0].resource.attributes}
    assert attrs[KEY_ATTRIBUTE] == "rollup:box:1" and attrs["service.instance.id"] == "box"
    metrics = by_name(request)

    counter = metrics["edged_http_requests"].sum
    assert counter.is_monotonic
    assert counter.aggregation_temporality == AGGREGATION_TEMPORALITY_CUMULATIVE
    (point,) = counter.data_points
    assert point.as_double == 3 and point.start_time_unix_nano == 10
    assert {a.key: a.value.string_value for a in point.attributes}["status"] == "200"

    (hist,) = metrics["edged_http_request_seconds"].histogram.data_points
    assert list(hist.explicit_bounds) == list(LATENCY_BUCKETS)
    assert len(hist.bucket_counts) == len(LATENCY_BUCKETS) + 1
    assert hist.count == 4 and sum(hist.bucket_counts) == 4
    assert hist.bucket_counts[1] == 1 and hist.bucket_counts[3] == 2  # <=5ms, <=25ms
    assert hist.bucket_counts[-1] == 1  # above the last bound (120 s)
    assert abs(hist.sum - 200.042) < 1e-9

    assert metrics["edged_up"].gauge.data_points[0].as_double == 1
    assert metrics["process_resident_memory_bytes"].gauge.data_points[0].as_double > 0


async def test_rollups_travel_as_otlp_and_batch_by_concatenation(tmp_path: Path) -> None:
    cloud = FakeCloud()
    await cloud.start()
    try:
        async with rig(tmp_path, cloud.url) as r:
            rollups = Rollups(60, Metrics().registry, r.outbox, device_id="box-1")
            keys = [await rollups.queue_one() for _ in range(3)]
            assert (await r.uploader.drain()).sent == {METRICS: 3}
            assert cloud.metric_keys == keys  # one request, three resource_metrics, in order
            assert [path for path, _ in cloud.requests] == ["/v1/metrics"]
            assert cloud.headers[-1]["Content-Type"] == "application/x-protobuf"
    finally:
        await cloud.stop()


async def test_rollups_refused_for_good_are_dropped_and_counted(tmp_path: Path) -> None:
    cloud = FakeCloud()
    await cloud.start()
    cloud.mode = "400"  # OTLP: a 4xx other than 408/429 must not be retried
    try:
        async with rig(tmp_path, cloud.url) as r:
            rollups = Rollups(60, Metrics().registry, r.outbox, device_id="box-1")
            await rollups.queue_one()
            result = await r.uploader.drain()
            assert result.error is None and result.sent == {} and await r.queued() == 0
            dropped = r.registry.get_sample_value("edged_outbox_dropped_total",
                                                  {"kind": METRICS})
            assert dropped == 1
    finally:
        await cloud.stop()
