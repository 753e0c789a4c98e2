"""Every route's body, query and headers, property-based against the real daemon."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.edgedtest import RunningDaemon
from tests.fuzz.conftest import FUZZ, check_answer, check_daemon
from tests.fuzz.strategies import FIELDS, HEADER_NAMES, HEADER_VALUES, QUERY_VALUES, body
from tests.fuzz.wire import http, send

ROUTES = sorted(FIELDS)
GETS = ["/health", "/metrics", "/v1/models", "/v1/models/gemma3-270m", "/v1/agents",
        "/admin/ps", "/admin/config", "/admin/audit/verify", "/admin/approvals"]


def test_bodies(fuzzed: RunningDaemon) -> None:
    @settings(FUZZ, max_examples=FUZZ.max_examples * 4)
    @given(st.sampled_from(ROUTES).flatmap(lambda r: st.tuples(st.just(r), body(r))))
    def one(case: tuple[str, bytes]) -> None:
        route, raw = case
        check_answer(send(fuzzed.socket, http("POST", route, raw)), case)

    one()
    check_daemon(fuzzed)


def test_queries_and_paths(fuzzed: RunningDaemon) -> None:
    names = st.sampled_from(["generation", "wait", "since", "limit", "x", "wait\x00"])

    @settings(FUZZ)
    @given(st.sampled_from([*GETS, "/admin/config"]), st.dictionaries(
        names, QUERY_VALUES, max_size=3), st.text(max_size=20), st.booleans())
    def one(route: str, query: dict[str, str], segment: str, post: bool) -> None:
        target = route + "?" + "&".join(f"{quote(k)}={quote(v, safe='%')}"
                                         for k, v in query.items())
        method = "POST" if post and route == "/admin/config" else "GET"
        check_answer(send(fuzzed.socket, http(method, target)), target)
        path = "/v1/models/" + quote(segment, safe="%/.")
        check_answer(send(fuzzed.socket, http("GET", path)), path)
        check_answer(send(fuzzed.socket, http("POST", f"/v1/agents/{quote(segment)}/chat",
                                               b'{"message": "hi"}')), segment)

    one()
    check_daemon(fuzzed)


def test_headers(fuzzed: RunningDaemon) -> None:
    @settings(FUZZ)
    @given(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
           st.sampled_from(["/health", "/v1/agents/kiosk/chat", "/admin/sync"]))
    def one(headers: list[tuple[bytes, bytes]], route: str) -> None:
        method = "GET" if route == "/health" else "POST"
        raw = http(method, route, b'{"message": "do you have headphones"}'
                   if "agents" in route else b"", headers)
        check_answer(send(fuzzed.socket, raw), headers)

    one()
    check_daemon(fuzzed)
