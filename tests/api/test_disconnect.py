"""A client that leaves: counted as 499, no traceback; an abandoned inference stops."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.client import Client
from tests.api.inprocess import Served
from tests.edgedtest import (
    MODEL_CACHE,
    RunningDaemon,
    base_config,
    bundled_alias,
    deep_merge,
    running,
    short_tmpdir,
)


def leave_mid_body(path: Path, route: str, declared: int, sent: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.sendall(f"POST {route} HTTP/1.1\r\nHost: edged\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {declared}\r\n\r\n".encode() + sent)


async def test_a_client_leaving_mid_body_is_a_499_not_a_500(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    leave_mid_body(served.path, "/v1/echo", 900, b'{"text": "')
    # the next request on the server answers once the first is over (one loop)
    def counted(status: str) -> float | None:
        return served.metrics.registry.get_sample_value(
            "edged_http_requests_total", {"route": "/v1/echo", "method": "POST", "status": status})

    for _ in range(50):
        await served.call("GET", "/whoami")
        if counted("499"):
            break
    assert counted("499") == 1
    assert counted("500") is None
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text
    left = [r for r in caplog.records if "left before its answer" in r.getMessage()]
    assert len(left) == 1 and left[0].levelname == "DEBUG"


MODEL = "emb"
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningDaemon]:
    folder = short_tmpdir()
    config = deep_merge(base_config(folder / "st"), {
        "audit": {"enabled": False},
        "models": {"cache_dir": str(MODEL_CACHE), MODEL: bundled_alias(embedding=True),
                   "gen": bundled_alias(chat_format="gemma-base")}})
    try:
        with running(config, folder / "st") as d:
            yield d
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def abandon(d: RunningDaemon, route: str, alias: str, body: dict[str, object]) -> None:
    """Send a request, wait until the model's worker has it, and leave."""
    raw = json.dumps(body).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(d.socket))
        s.sendall(f"POST {route} HTTP/1.1\r\nHost: edged\r\nContent-Type: application/json"
                  f"\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw)
        for _ in range(10_000):  # until the worker has it (each look is a request)
            (model,) = [m for m in d.client.get("/admin/ps")["models"] if m["model"] == alias]
            if model["in_flight"]:
                break
        assert model["in_flight"] == 1


def test_an_abandoned_embedding_request_frees_its_model(daemon: RunningDaemon) -> None:
    daemon.client.post(f"/admin/models/{MODEL}/load", {})
    abandon(daemon, "/v1/embeddings", MODEL, {"model": MODEL, "input": [LONG] * 256})
    # 256 texts take minutes on this machine; cut at the next batch, the model is free at once
    quick = Client(daemon.socket, timeout=60)
    out = quick.post("/v1/embeddings", {"model": MODEL, "input": ["hello"]})
    assert len(out["data"]) == 1
    metrics = daemon.client.get("/metrics")
    assert 'method="POST",route="/v1/embeddings",status="499"} 1.0' in metrics, metrics
    assert "Traceback" not in daemon.log()


def test_an_abandoned_completion_stops_at_the_next_token(daemon: RunningDaemon) -> None:
    daemon.client.post("/admin/models/gen/load", {})
    # greedy counting runs to max_tokens when nobody stops it (measured: 450 of 450)
    abandon(daemon, "/v1/completions", "gen", {
        "model": "gen", "max_tokens": 450, "temperature": 0.0,
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8,"})
    quick = Client(daemon.socket, timeout=60)
    out = quick.post("/v1/chat/completions", {"model": "gen", "max_tokens": 2, "messages": [
        {"role": "user", "content": "hi"}]})
    assert out["choices"][0]["message"]["role"] == "assistant"
    metrics = daemon.client.get("/metrics")
    assert 'method="POST",route="/v1/completions",status="499"} 1.0' in metrics
    (generated,) = [float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith('edged_model_tokens_total{model="gen"}')]
    assert generated < 450 - 100, "the abandoned completion ran (nearly) to its end"
