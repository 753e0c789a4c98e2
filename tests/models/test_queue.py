"""The per-model queue: a full queue answers 429 with Retry-After; a client that goes away
mid-stream stops its generation and frees the worker."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pytest

from tests.edgedtest import (
    MODEL_CACHE,
    RunningDaemon,
    base_config,
    bundled_alias,
    deep_merge,
    running,
    short_tmpdir,
)

# A base model keeps counting until it runs out of tokens.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
LONG = 64


@pytest.fixture(scope="module")
def daemon(bundled_model_path: Path) -> Iterator[RunningDaemon]:
    tmp = short_tmpdir()
    state = tmp / "st"
    config = deep_merge(base_config(state), {
        "budget": {"queue_size": 1},
        # One sequence: a second request waits for the first (the queue under test).
        "models": {"cache_dir": str(MODEL_CACHE), "g": bundled_alias(context=1024, parallel=1)}})
    try:
        with running(config, state) as d:
            yield d
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("edged", timeout=120)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def post(d: RunningDaemon, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    conn = _Unix(d.socket)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read())
    finally:
        conn.close()


def open_stream(d: RunningDaemon) -> tuple[_Unix, http.client.HTTPResponse]:
    """A long streaming completion, returned once its first token has arrived."""
    conn = _Unix(d.socket)
    conn.request("POST", "/v1/completions", json.dumps({
        "model": "g", "prompt": COUNTING, "max_tokens": LONG, "temperature": 0,
        "stream": True}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    while not resp.readline().startswith(b"data:"):
        pass
    return conn, resp


def tokens_generated(d: RunningDaemon) -> float:
    m = re.search(r'edged_model_tokens_total{model="g"} (\S+)', d.client.get("/metrics"))
    return float(m.group(1)) if m else 0.0


def short(d: RunningDaemon) -> tuple[int, dict[str, str], Any]:
    return post(d, {"model": "g", "prompt": "Hello", "max_tokens": 2})


def test_disconnect_mid_stream_stops_generation(daemon: RunningDaemon) -> None:
    # Unwatched, this prompt runs to max_tokens...
    status, _, body = post(daemon, {"model": "g", "prompt": COUNTING, "max_tokens": LONG,
                                    "temperature": 0})
    assert status == 200 and body["choices"][0]["finish_reason"] == "length"
    before = tokens_generated(daemon)
    # ...but a client that hangs up after the first token stops it.
    conn, _resp = open_stream(daemon)
    conn.close()
    status, _, _ = short(daemon)  # runs only once the worker is free
    assert status == 200
    assert tokens_generated(daemon) - before < LONG / 2
    assert daemon.client.get("/admin/ps")["models"][0]["in_flight"] == 0


def test_full_queue_answers_429_with_retry_after(daemon: RunningDaemon) -> None:
    conn, _resp = open_stream(daemon)  # runs; the queue (size 1) is empty
    with ThreadPoolExecutor(2) as pool:
        try:
            # One of these two waits in the queue, the other finds it full and returns
            # at once, while the stream still holds the worker.
            pending = [pool.submit(short, daemon) for _ in range(2)]
            first = next(as_completed(pending)).result()
        finally:
            conn.close()  # frees the worker for the waiting one
        second = next(f for f in pending if f.result() is not first).result()
    status, headers, body = first
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert body["error"]["code"] == "queue_full"
    assert "budget.queue_size = 1" in body["error"]["message"]
    assert second[0] == 200


def test_a_repeated_prefix_is_served_from_the_cache_and_shown(daemon: RunningDaemon) -> None:
    """Over the socket: the second prompt with the same opening says how many of its tokens
    came from the cache, and /admin/ps counts the cached prefix."""
    opening = "Instructions: answer in one short sentence about the hardware store. " * 8
    post(daemon, {"model": "g", "prompt": opening + "Hammers?", "max_tokens": 2})
    second = post(daemon, {"model": "g", "prompt": opening + "Glue?", "max_tokens": 2})[2]
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert 60 < cached <= second["usage"]["prompt_tokens"] - 2
    assert daemon.client.get("/admin/ps")["models"][0]["cached_prefixes"] >= 1
    refused = post(daemon, {"model": "g", "prompt": opening, "max_tokens": 2,
                            "cache_prompt": "yes"})
    assert refused[0] == 400 and "cache_prompt" in refused[2]["error"]["message"]
