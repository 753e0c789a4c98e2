"""GET /health and GET /metrics on the real daemon."""

from __future__ import annotations

from tests.api.curl import curl
from tests.edgedtest import RunningDaemon


def test_health_shape(daemon: RunningDaemon) -> None:
    status, body = curl(daemon, "/health")
    assert status == 200
    assert body["status"] == "ok"
    assert {"version", "uptime_s", "peer"} <= set(body)
    for name, part in body.items():
        if isinstance(part, dict) and name != "peer":
            assert not part.get("degraded"), (name, part)


def test_metrics_has_process_figures_and_request_counts(daemon: RunningDaemon) -> None:
    curl(daemon, "/health")
    status, text = curl(daemon, "/metrics")
    assert status == 200
    assert "process_resident_memory_bytes" in text
    assert 'edged_http_requests_total{method="GET",route="/health",status="200"}' in text
    assert 'edged_http_request_seconds_bucket{le="0.001",method="GET",route="/health"}' in text
    assert "edged_up 1.0" in text
    assert "edged_http_requests_in_flight 1.0" in text  # this very request
