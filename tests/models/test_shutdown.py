"""A stream still running when shutdown's grace period ends gets a proper end."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import httpx

from tests.edgedtest import (
    MODEL_CACHE,
    base_config,
    bundled_alias,
    deep_merge,
    running,
    short_tmpdir,
)


def test_a_stream_cut_by_shutdown_ends_with_an_error_and_done(bundled_model_path: Path) -> None:
    tmp = short_tmpdir()
    state = tmp / "st"
    config = deep_merge(base_config(state), {
        "daemon": {"grace_period": "0.1s"},
        "models": {"cache_dir": str(MODEL_CACHE), "g": bundled_alias()}})
    # Counting goes on far past the grace period (2000 tokens); it never reaches the end.
    body = {"model": "g", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 2000, "temperature": 0,
            "stream": True}
    try:
        with running(config, state) as d, httpx.Client(
                transport=httpx.HTTPTransport(uds=str(d.socket)), timeout=120) as http:
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_while_draining_new_requests_get_503_and_the_stream_in_flight_finishes(
        bundled_model_path: Path) -> None:
    tmp = short_tmpdir()
    state = tmp / "st"
    config = deep_merge(base_config(state), {
        "daemon": {"grace_period": "120s"},
        "models": {"cache_dir": str(MODEL_CACHE), "g": bundled_alias()}})
    # Long enough (several seconds) to be still running while the test asks again.
    body = {"model": "g", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 300, "temperature": 0,
            "stream": True}
    try:
        with running(config, state, keep_notify=True) as d, httpx.Client(
                transport=httpx.HTTPTransport(uds=str(d.socket)), timeout=120) as http:
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_second_sigterm_while_draining_exits_at_once(bundled_model_path: Path) -> None:
    tmp = short_tmpdir()
    state = tmp / "st"
    config = deep_merge(base_config(state), {
        "daemon": {"grace_period": "600s"},
        "models": {"cache_dir": str(MODEL_CACHE), "g": bundled_alias()}})
    body = {"model": "g", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 4000, "temperature": 0,
            "stream": True}
    try:
        with running(config, state, keep_notify=True) as d, httpx.Client(
                transport=httpx.HTTPTransport(uds=str(d.socket)), timeout=120) as http:
            with http.stream("POST", "http://edged/v1/completions", json=body) as r:
                for n, _line in enumerate(r.iter_lines()):
                    if n == 4:
                        break
                d.proc.send_signal(signal.SIGTERM)
                d.notifications(b"STOPPING=1")  # draining, the stream still running
                d.proc.send_signal(signal.SIGTERM)
                assert d.proc.wait(30) == 70
            assert "again while stopping: exiting now" in d.log()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
