"""Hostile JSON bodies: still a 400 envelope naming the problem, never a 500."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.api.curl import curl
from tests.api.inprocess import Served
from tests.edgedtest import RunningDaemon


@pytest.mark.parametrize(("raw", "fragment"), [
    (b'{"text": "a", "times": NaN}', "NaN is not a JSON number"),
    (b'{"text": "a", "times": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"text": "hi \\ud800"}', "text: contains an unpaired surrogate"),
    (b'{"text": "a", "x": {"y": ["ok", "\\udfff"]}}', "x.y[1]: contains an unpaired surrogate"),
])
async def test_hostile_json_is_a_400(served: Served, raw: bytes, fragment: str) -> None:
    status, body, _ = await served.call("POST", "/v1/echo", data=raw)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_json"
    assert fragment in body["error"]["message"]


def test_deep_nesting_is_a_400_on_the_real_daemon(
        edged: Callable[..., RunningDaemon]) -> None:
    daemon = edged({"audit": {"enabled": False}})
    raw = b'{"model": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    status, body = curl(daemon, "/v1/chat/completions", method="POST", data=raw)
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    assert "nested too deeply" in body["error"]["message"]
    status, _ = curl(daemon, "/health")
    assert status == 200


def test_a_huge_integer_is_a_400_on_the_real_daemon(
        edged: Callable[..., RunningDaemon]) -> None:
    # past Python's int-string limit (4,300 digits) json raises ValueError, not a decode error
    daemon = edged({"audit": {"enabled": False}})
    raw = b'{"model": "x", "max_tokens": ' + b"9" * 5000 + b"}"
    status, body = curl(daemon, "/v1/chat/completions", method="POST", data=raw)
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    assert "number too large" in body["error"]["message"]
    status, body = curl(daemon, "/admin/ps?generation=inf&wait=1")
    assert status == 400 and "generation" in body["error"]["message"]


async def test_null_means_not_given(served: Served) -> None:
    status, body, _ = await served.call("POST", "/v1/echo", json={"text": "ab", "times": None})
    assert (status, body) == (200, {"echo": "ab"})
    status, body, _ = await served.call("POST", "/v1/echo", json={"text": None})
    assert status == 400
    assert body["error"]["message"] == "text: required key is missing"
