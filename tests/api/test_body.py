"""JSON request bodies: every error is a 400 naming the field, a body over the limit a 413."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.api.curl import curl
from tests.api.inprocess import MAX_BODY, Served
from tests.edgedtest import RunningDaemon


async def test_a_valid_body_is_read(served: Served) -> None:
    status, body, _ = await served.call("POST", "/v1/echo", json={"text": "ab", "times": 2})
    assert (status, body) == (200, {"echo": "abab"})


@pytest.mark.parametrize(("raw", "fragment"), [
    (b'{"text": "a"', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b'["text"]', "must be a JSON object"),
])
async def test_malformed_json_is_a_400_envelope(served: Served, raw: bytes, fragment: str) -> None:
    status, body, _ = await served.call("POST", "/v1/echo", data=raw)
    assert status == 400
    assert body["error"]["code"] == "invalid_json"
    assert fragment in body["error"]["message"]


@pytest.mark.parametrize(("doc", "message"), [
    ({}, "text: required key is missing"),
    ({"text": 3}, "text: expected a string, got 3"),
    ({"text": "a", "times": 99}, "times: 99 is above the maximum 10"),
    ({"text": "a", "colour": "red"}, "colour: unknown key"),
])
async def test_a_bad_field_is_named(served: Served, doc: dict[str, Any], message: str) -> None:
    status, body, _ = await served.call("POST", "/v1/echo", json=doc)
    assert status == 400
    assert body["error"] == {"code": "bad_request", "message": message}


async def test_a_chunked_oversized_body_is_a_413(served: Served) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * MAX_BODY

    status, body, _ = await served.call("POST", "/v1/echo", data=chunks())
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"


def test_malformed_json_on_the_real_daemon(daemon: RunningDaemon) -> None:
    # Any route that reads a JSON body goes through edged.api.body; chat is one.
    status, body = curl(daemon, "/v1/chat/completions", method="POST", data=b'{"model": ')
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    assert "not valid JSON" in body["error"]["message"]
