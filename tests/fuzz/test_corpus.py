"""The inputs issue 15 found, kept as regression cases against the fuzz daemon."""

from __future__ import annotations

import json

import pytest

from tests.edgedtest import RunningDaemon
from tests.fuzz.conftest import check_answer, check_daemon
from tests.fuzz.strategies import FIELDS
from tests.fuzz.wire import http, send

HUGE_INT = b"9" * 4400
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
CHAT = {"model": "gemma3-270m", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2}


def bundle(**fields: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "format": "edged-config-bundle/1", "version": 1, "issued_at": "2026-01-01T00:00:00Z",
        "key_id": "0123456789abcdef", "selector": {"devices": ["test-box"]}, "config": "",
        "signature": "AA=="}
    doc.update(fields)
    return doc


def post(d: RunningDaemon, route: str, raw: bytes) -> tuple[int, dict[str, object]]:
    resp = send(d.socket, http("POST", route, raw))
    assert resp is not None
    check_answer(resp, (route, raw[:100]))
    return resp.status, resp.json()["error"] if resp.status >= 400 else resp.json()


# the routes that read a JSON body (unload and sync take none)
@pytest.mark.parametrize("route", sorted(r for r in FIELDS if not r.endswith(("unload", "sync"))))
def test_a_huge_integer_is_invalid_json_everywhere(fuzzed: RunningDaemon, route: str) -> None:
    status, error = post(fuzzed, route, b'{"x": ' + HUGE_INT + b"}")
    assert status == 400, error
    assert error["code"] in ("invalid_json", "bad_bundle"), error


@pytest.mark.parametrize("properties", [[], ["a"], 3, "x", None])
def test_tool_properties_of_the_wrong_shape(fuzzed: RunningDaemon, properties: object) -> None:
    tool = json.loads(json.dumps(TOOL))
    tool["function"]["parameters"]["properties"] = properties
    status, error = post(fuzzed, "/v1/chat/completions",
                         json.dumps({**CHAT, "tools": [tool]}).encode())
    if properties is None:
        return  # null means not given: a valid request
    assert status == 400 and "properties" in str(error["message"]), error


@pytest.mark.parametrize(("doc", "status"), [
    (bundle(version=2**63), 400),
    (bundle(version=0), 400),
    (bundle(key_id="k" * 60_000), 400),
    (bundle(config=json.loads("[" * 900 + "]" * 900)), 400),
])
def test_hostile_bundles_are_refused_and_recorded(fuzzed: RunningDaemon,
                                                  doc: dict[str, object], status: int) -> None:
    before = len(fuzzed.client.get("/admin/config")["history"])
    got, error = post(fuzzed, "/admin/config", json.dumps(doc).encode())
    assert got == status, error
    after = fuzzed.client.get("/admin/config")["history"]
    assert len(after) == min(before + 1, 20) and after[0]["outcome"] == "rejected"


def test_a_deeply_nested_bundle_and_an_oversized_one(fuzzed: RunningDaemon) -> None:
    deep = b'{"format": ' + b"[" * 990 + b"]" * 990 + b"}"
    status, error = post(fuzzed, "/admin/config", deep)
    assert status == 400 and error["code"] == "bad_bundle", error
    huge = b'{"format": ' + b"[" * 40_000 + b"]" * 40_000 + b"}"  # past daemon.max_body
    status, error = post(fuzzed, "/admin/config", huge)
    assert status == 413, error


@pytest.mark.parametrize("query", ["generation=inf&wait=1", "generation=nan&wait=1",
                                   "generation=1e400&wait=1", "wait=inf", "generation=-inf"])
def test_ps_queries(fuzzed: RunningDaemon, query: str) -> None:
    resp = send(fuzzed.socket, http("GET", f"/admin/ps?{query}"))
    check_answer(resp, query)
    assert resp is not None and resp.status in (200, 400), resp


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /health HTTP/2.0\r\nHost: edged\r\n\r\n", 505),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: edged\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nHost: edged\r\n" + b"X-H: v\r\n" * 200 + b"\r\n", 400),
    (b"POST /admin/sync HTTP/1.1\r\nHost: edged\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"zz\r\n\r\n", 400),
    (b"POST /admin/sync HTTP/1.1\r\nHost: edged\r\nContent-Length: 1\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\n\r\n", 400),
    (b"POST /v1/agents/kiosk/chat HTTP/1.1\r\nHost: edged\r\nContent-Encoding: br\r\n"
     b"Content-Length: 4\r\n\r\nabcd", 400),
    (b"POST /v1/agents/kiosk/chat HTTP/1.1\r\nHost: edged\r\nContent-Encoding: zstd\r\n"
     b"Content-Length: 4\r\n\r\nabcd", 400),
    (b"GET /health HTTP/1.1\r\nHost: edged\r\nX-Request-Id: \xff\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nHost: edged\r\nExpect: \x80\r\n\r\n", 417),
])
def test_protocol_inputs(fuzzed: RunningDaemon, raw: bytes, status: int) -> None:
    resp = send(fuzzed.socket, raw)
    check_answer(resp, raw[:100])
    assert resp is not None and resp.status == status, resp


def test_the_daemon_after_the_corpus(fuzzed: RunningDaemon) -> None:
    check_daemon(fuzzed)
