"""The protocol itself, over a raw socket: request lines, versions, headers, framing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.edgedtest import RunningDaemon
from tests.fuzz.conftest import FUZZ, check_answer, check_daemon
from tests.fuzz.strategies import HEADER_NAMES, HEADER_VALUES
from tests.fuzz.wire import send

METHODS = st.one_of(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS",
                                     b"PATCH", b"CONNECT", b"TRACE", b"PRI", b"get"]),
                    st.binary(min_size=1, max_size=8))
TARGETS = st.one_of(st.sampled_from([b"/health", b"/v1/agents/kiosk/chat", b"/admin/config",
                                     b"*", b"http://edged/health", b"//", b"/../etc",
                                     b"/" + b"a" * 9000, b"/%ff%fe", b"/health?%00"]),
                    st.binary(max_size=40))
VERSIONS = st.one_of(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9",
                                      b"HTTP/1.2", b"HTTP/3", b"http/1.1", b""]),
                     st.binary(max_size=10))
FRAMING = st.sampled_from([
    [], [(b"Content-Length", b"5")], [(b"Content-Length", b"-1")],
    [(b"Content-Length", b"99999999999999999999")], [(b"Transfer-Encoding", b"chunked")],
    [(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")],
    [(b"Transfer-Encoding", b"gzip, chunked")], [(b"Content-Encoding", b"br")],
    [(b"Content-Encoding", b"zstd")], [(b"Content-Encoding", b"gzip")],
    [(b"Content-Length", b"1"), (b"Content-Length", b"2")], [(b"Expect", b"100-continue")],
    [(b"Upgrade", b"h2c"), (b"Connection", b"Upgrade")]])
BODIES = st.one_of(st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n",
                                    b"0\r\n\r\n", b"{}", b'{"message": "hi"}']),
                   st.binary(max_size=64))


@st.composite
def request(draw: st.DrawFn) -> bytes:
    line = draw(METHODS) + b" " + draw(TARGETS) + b" " + draw(VERSIONS)
    headers = [] if draw(st.booleans()) else [(b"Host", b"edged")]
    headers += draw(FRAMING) + draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES),
                                             max_size=3))
    if draw(st.integers(0, 9)) == 0:
        headers += [(f"X-H{i}".encode(), b"v") for i in range(200)]
    raw = line + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
    raw += draw(BODIES)
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    return raw if cut is None else raw[:cut]


def test_raw_requests(fuzzed: RunningDaemon) -> None:
    @settings(FUZZ, max_examples=FUZZ.max_examples * 3)
    @given(request())
    def one(raw: bytes) -> None:
        check_answer(send(fuzzed.socket, raw, timeout=30), raw[:200])

    one()
    check_daemon(fuzzed)


def test_pipelined_requests_and_garbage_after_one(fuzzed: RunningDaemon) -> None:
    @settings(FUZZ)
    @given(st.lists(request(), min_size=1, max_size=3))
    def one(raws: list[bytes]) -> None:
        good = b"GET /health HTTP/1.1\r\nHost: edged\r\n\r\n"
        check_answer(send(fuzzed.socket, good + b"".join(raws), timeout=30), raws)

    one()
    check_daemon(fuzzed)
