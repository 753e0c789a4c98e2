"""A stream still running when shutdown's grace period ends gets a proper end."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.edgedtest import (
    MODEL_CACHE,
    RunningDaemon,
    base_config,
    bundled_alias,
    deep_merge,
    running,
    short_tmpdir,
)


@contextmanager
def counting(grace: str, max_tokens: int, *, keep_notify: bool = False
             ) -> Iterator[tuple[RunningDaemon, httpx.Client, dict[str, Any]]]:
    """The bundled model behind a daemon with this grace period, a client on its socket,
    and the body of a streamed completion that counts (a base model goes on counting)."""
    tmp = short_tmpdir()
    state = tmp / "st"
    config = deep_merge(base_config(state), {
        "daemon": {"grace_period": grace},
        "models": {"cache_dir": str(MODEL_CACHE), "g": bundled_alias()}})
    body = {"model": "g", "prompt": "1, 2, 3, 4, 5,", "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    try:
        with running(config, state, keep_notify=keep_notify) as d, httpx.Client(
                transport=httpx.HTTPTransport(uds=str(d.socket)), timeout=120) as http:
            yield d, http, body
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_stream_cut_by_shutdown_ends_with_an_error_and_done(bundled_model_path: Path) -> None:
    # Counting goes on far past the grace period (2000 tokens); it never reaches the end.
    with counting("0.1s", 2000) as (d, http, body):
        events = []
        with http.stream("POST", "http://edged/v1/completions", json=body) as r:
            for line in r.iter_lines():  # raises if the chunked body is cut off
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    if len(events) == 3:  # once: a second SIGTERM forces the exit
                        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(60) == 0
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "draining"
        assert all(json.loads(e)["choices"][0]["finish_reason"] is None
                   for e in events[:-2])


def test_while_draining_new_requests_get_503_and_the_stream_in_flight_finishes(
        bundled_model_path: Path) -> None:
    # Long enough (several seconds) to be still running while the test asks again.
    with counting("120s", 300, keep_notify=True) as (d, http, body):
        events: list[str] = []
        refused = None
        with http.stream("POST", "http://edged/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                if len(events) == 3 and refused is None:  # once: a second one forces
                    d.proc.send_signal(signal.SIGTERM)
                    d.notifications(b"STOPPING=1")  # it has begun to drain
                    # The socket stays and answers while the stream runs.
                    with httpx.Client(transport=httpx.HTTPTransport(
                            uds=str(d.socket))) as other:
                        refused = other.get("http://edged/health")
        assert refused is not None and refused.status_code == 503
        assert refused.json()["error"]["code"] == "draining"
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        assert d.proc.wait(60) == 0
        assert not d.socket.exists()


def test_a_second_sigterm_while_draining_exits_at_once(bundled_model_path: Path) -> None:
    with counting("600s", 4000, keep_notify=True) as (d, http, body):
        with http.stream("POST", "http://edged/v1/completions", json=body) as r:
            for n, _line in enumerate(r.iter_lines()):
                if n == 4:
                    break
            d.proc.send_signal(signal.SIGTERM)
            d.notifications(b"STOPPING=1")  # draining, the stream still running
            d.proc.send_signal(signal.SIGTERM)
            assert d.proc.wait(30) == 70
        assert "again while stopping: exiting now" in d.log()
