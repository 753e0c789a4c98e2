"""The API of the real daemon: envelopes, /health, /metrics, and roles by peer uid.

One daemon for the module. Its socket is 0666 in a world-readable folder so that clients
running as other users (the tests run as root) can reach it and be judged by their uid.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.edgedtest import RunningDaemon, base_config, deep_merge, running, short_tmpdir

# nobody's primary group is nogroup: a client. daemon (uid 1) is in no edged group: no role.
CLIENT_USER = "nobody"
NO_ROLE_USER = "daemon"


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningDaemon]:
    folder = short_tmpdir()
    os.chmod(folder, 0o755)
    config = deep_merge(base_config(folder / "st"), {"daemon": {
        "socket": str(folder / "s.sock"), "socket_mode": "0666", "max_body": "1KiB",
        "client_groups": ["nogroup"], "admin_groups": ["edged-admin-test"]}})
    try:
        with running(config, folder / "st") as d:
            yield d
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def curl(d: RunningDaemon, path: str, *, user: str | None = None, method: str = "GET",
         data: bytes | None = None, as_is: bool = False) -> tuple[int, Any]:
    """A request from another process (optionally another uid): status and JSON body."""
    args = ["curl", "-sS", "--unix-socket", str(d.socket), "-X", method,
            "-o", "-", "-w", "\n%{http_code}", f"http://edged{path}"]
    if as_is:
        args.insert(1, "--path-as-is")  # send ".." and "." segments as they are
    if data is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    # user= alone keeps root's gid; take the user's own primary group, and no others.
    who: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        who = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    out = subprocess.run(args, input=data, capture_output=True, check=True, timeout=60,
                         **who).stdout.decode()
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body) if body.startswith("{") else body


def test_health_shape(daemon: RunningDaemon) -> None:
    status, body = curl(daemon, "/health")
    assert status == 200
    assert body["status"] == "ok"
    assert {"version", "uptime_s", "peer"} <= set(body)
    assert body["peer"]["role"] == "admin"  # root


def test_metrics_has_process_figures_and_request_counts(daemon: RunningDaemon) -> None:
    curl(daemon, "/health")
    status, text = curl(daemon, "/metrics")
    assert status == 200
    assert "process_resident_memory_bytes" in text
    assert 'edged_http_requests_total{method="GET",route="/health",status="200"}' in text
    assert 'edged_http_request_seconds_bucket{le="0.001",method="GET",route="/health"}' in text
    assert "edged_up 1.0" in text


def test_unknown_route_is_a_404_envelope(daemon: RunningDaemon) -> None:
    assert curl(daemon, "/nope") == (404, {"error": {"code": "not_found",
                                                     "message": "no such route"}})


def test_wrong_method_is_a_405_envelope(daemon: RunningDaemon) -> None:
    status, body = curl(daemon, "/health", method="DELETE")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")


def test_oversized_body_is_a_413_envelope(daemon: RunningDaemon) -> None:
    status, body = curl(daemon, "/health", method="POST", data=b"{" + b" " * 2048 + b"}")
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    assert "1024 bytes" in body["error"]["message"]


def test_malformed_json_is_a_400_envelope(daemon: RunningDaemon) -> None:
    # Any route that reads a JSON body goes through edged.api.body; chat is one.
    status, body = curl(daemon, "/v1/chat/completions", method="POST", data=b'{"model": ')
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    assert "not valid JSON" in body["error"]["message"]


@pytest.mark.parametrize(("user", "path", "expected"), [
    (NO_ROLE_USER, "/health", 200),
    (NO_ROLE_USER, "/metrics", 200),
    (NO_ROLE_USER, "/v1/models", 403),
    (NO_ROLE_USER, "/admin/ps", 403),
    (CLIENT_USER, "/health", 200),
    (CLIENT_USER, "/admin/ps", 403),
])
def test_roles_come_from_the_peer_uid(daemon: RunningDaemon, user: str, path: str,
                                      expected: int) -> None:
    status, body = curl(daemon, path, user=user)
    assert status == expected, body
    if expected == 403:
        assert body["error"]["code"] == "forbidden"
        assert f"{path} needs the" in body["error"]["message"]


@pytest.mark.parametrize("path", ["//admin/ps", "/v1/../admin/ps", "/%61dmin/ps", "/./admin/ps",
                                  "/health/../admin/ps", "/admin%2Fps", "/v1/%2e%2e/admin/ps"])
def test_spelling_a_path_differently_does_not_skip_the_role_check(
        daemon: RunningDaemon, path: str) -> None:
    status, _ = curl(daemon, path, user=NO_ROLE_USER, as_is=True)
    assert status in (403, 404)


def test_a_client_passes_the_role_check_on_v1(daemon: RunningDaemon) -> None:
    # An unknown /v1 route: a client gets past the role check to the router's 404.
    status, body = curl(daemon, "/v1/no-such-route", user=CLIENT_USER)
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = curl(daemon, "/health", user=CLIENT_USER)
    assert body["peer"]["role"] == "client"


def test_the_socket_file_has_the_configured_mode(daemon: RunningDaemon) -> None:
    assert Path(daemon.socket).stat().st_mode & 0o777 == 0o666
