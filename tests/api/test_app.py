"""The middleware stack: one JSON error envelope, limits, roles table, request metrics.

In-process on a real Unix socket with the test routes of tests/api/inprocess.py, and then
the same envelopes on the real daemon.
"""

from __future__ import annotations

import pytest

from edged.api.app import required_role
from edged.roles import Role
from tests.api.curl import curl
from tests.api.inprocess import MAX_BODY, Served
from tests.edgedtest import RunningDaemon


async def test_unknown_route_and_wrong_method(served: Served) -> None:
    status, body, _ = await served.call("GET", "/v1/nope")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body, headers = await served.call("GET", "/v1/echo")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")
    assert headers["Allow"] == "POST"


async def test_a_declared_oversized_body_is_a_413_before_the_handler(served: Served) -> None:
    status, body, _ = await served.call("POST", "/v1/echo", data=b"x" * (MAX_BODY + 1))
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert "daemon.max_body" in body["error"]["message"]


async def test_an_unhandled_error_is_a_500_envelope_without_internals(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    status, body, _ = await served.call("GET", "/v1/boom")
    assert status == 500
    assert body == {"error": {"code": "internal", "message": "internal error; see the daemon log"}}
    assert "secret internals" in caplog.text  # logged once, at the boundary


async def test_queue_full_carries_retry_after(served: Served) -> None:
    status, body, headers = await served.call("GET", "/v1/full")
    assert (status, body["error"]["code"], headers["Retry-After"]) == (429, "queue_full", "3")


async def test_peer_credentials_name_the_caller(served: Served) -> None:
    status, body, _ = await served.call("GET", "/whoami")
    assert status == 200
    assert body["uid"] == 0 and body["role"] == "admin"


async def test_requests_are_counted_by_route_and_status(served: Served) -> None:
    await served.call("GET", "/v1/nope")
    await served.call("POST", "/v1/echo", json={"text": "a"})
    text = served.metrics.render().decode()
    assert ('edged_http_requests_total{method="POST",route="/v1/echo",status="200"} 1.0'
            in text)
    assert 'edged_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'edged_http_request_seconds_count{method="POST",route="/v1/echo"} 1.0' in text


def test_roles_are_in_one_table() -> None:
    assert required_role("/admin/ps") is Role.ADMIN
    assert required_role("/v1/models") is Role.CLIENT
    assert required_role("/health") is Role.NONE


def test_unknown_route_on_the_real_daemon(daemon: RunningDaemon) -> None:
    assert curl(daemon, "/nope") == (404, {"error": {"code": "not_found",
                                                     "message": "no such route"}})


def test_wrong_method_on_the_real_daemon(daemon: RunningDaemon) -> None:
    status, body = curl(daemon, "/health", method="DELETE")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")


def test_oversized_body_on_the_real_daemon(daemon: RunningDaemon) -> None:
    status, body = curl(daemon, "/health", method="POST", data=b"{" + b" " * 2048 + b"}")
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    assert "1024 bytes" in body["error"]["message"]
