"""Remote aliases (format = "openai") through the real daemon: a real OpenAI-compatible
server on loopback (llama_cpp.server with the bundled model), and a stand-in that refuses,
stalls, answers 500, resets mid-stream and answers garbage. One daemon for the module."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.edgedtest import (
    MODEL_CACHE,
    RunningDaemon,
    base_config,
    bundled_alias,
    cli,
    deep_merge,
    running,
    short_tmpdir,
)
from tests.models.fakeopenai import FakeOpenAI, threaded_openai

START_TIMEOUT = 240.0
ASK = [{"role": "user", "content": "Say hello."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(bundled_model_path: Path) -> Iterator[str]:
    """llama_cpp.server on loopback; ready once uvicorn says it is listening (its log)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model_path),
         "--n_ctx", "1024", "--n_threads", "1", "--n_threads_batch", "1",
         "--host", "127.0.0.1", "--port", str(port), "--model_alias", "gemma-backroom",
         "--chat_format", "gemma"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # ends if the server exits
            seen.append(line)
            if "Uvicorn running on" in line:
                break
        else:
            raise RuntimeError(f"llama_cpp.server exited: {''.join(seen)[-2000:]}")
        # Keep reading its log, or a full pipe would stall the server.
        drain = threading.Thread(target=proc.stderr.read, name="llama-server-log", daemon=True)
        drain.start()
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(60)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeOpenAI, Callable[[Any], Any]]]:
    with threaded_openai() as pair:
        yield pair


def _stand_in(fake: FakeOpenAI, name: str, **kw: Any) -> dict[str, Any]:
    return {"format": "openai", "base_url": fake.url(name), "model": f"big-{name}",
            "timeout": "1s", "fallback": "g", "breaker_failures": 1000, **kw}


@pytest.fixture(scope="module")
def daemon(llama_server: str, fake: tuple[FakeOpenAI, Any]) -> Iterator[RunningDaemon]:
    stand_in = fake[0]
    tmp = short_tmpdir()
    state = tmp / "st"
    key = tmp / "backroom.key"
    key.write_text("sk-test-123\n")
    key.chmod(0o600)
    config = deep_merge(base_config(state), {"models": {
        "cache_dir": str(MODEL_CACHE), "default": "g",
        "g": bundled_alias(context=1024),
        "backroom": {"format": "openai", "base_url": llama_server, "model": "gemma-backroom",
                     "timeout": "120s", "fallback": "g"},
        "flaky": _stand_in(stand_in, "flaky", api_key_file=str(key)),
        "nofb": {**_stand_in(stand_in, "nofb"), "fallback": None},
        "breaker": _stand_in(stand_in, "breaker", breaker_failures=2, breaker_open="1h"),
        "probe": _stand_in(stand_in, "probe", breaker_failures=1, breaker_open="0s"),
        "down": {**_stand_in(stand_in, "down"), "base_url": f"http://127.0.0.1:{_free_port()}/v1"},
    }})
    config["models"]["nofb"].pop("fallback")
    try:
        with running(config, state) as d:
            yield d
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def http(daemon: RunningDaemon) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)),
                      base_url="http://edged", timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(http: httpx.Client) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://edged/v1", api_key="x", http_client=http,
                         max_retries=0)


def chat(http: httpx.Client, model: str, **kw: Any) -> httpx.Response:
    return http.post("/v1/chat/completions",
                     json={"model": model, "messages": ASK, "max_tokens": 8, **kw})


def stream(http: httpx.Client, model: str, **kw: Any) -> tuple[httpx.Response, list[Any]]:
    """The response and its events (JSON objects, and "[DONE]")."""
    body = {"model": model, "messages": ASK, "max_tokens": 8, "stream": True, **kw}
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        events: list[Any] = []
        for line in resp.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
        return resp, events


def text_of(events: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in events
                   if isinstance(c, dict) and c.get("choices"))


# -- the real server ------------------------------------------------------------------------

def test_listed_as_remote_and_charged_nothing(http: httpx.Client) -> None:
    items = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert items["backroom"]["state"] == "remote"
    assert items["backroom"]["estimated_bytes"] == 0
    assert items["backroom"]["fallback"] == "g"
    assert items["g"]["state"] in ("loaded", "unloaded")
    assert http.get("/v1/models/flaky").json()["state"] == "remote"


def test_chat_through_the_backroom_server(sdk: openai.OpenAI, http: httpx.Client) -> None:
    before = http.get("/admin/ps").json()
    raw = sdk.chat.completions.with_raw_response.create(
        model="backroom", messages=[{"role": "user", "content": "What is the capital of "
                                     "France?"}], max_tokens=16, temperature=0)
    r = raw.parse()
    assert raw.headers["x-edged-served-by"] == "backroom"
    assert r.model == "backroom"
    assert r.choices[0].message.content  # a base model: some text, not necessarily Paris
    assert r.usage is not None and r.usage.completion_tokens > 0
    # Nothing loaded locally for it, nothing charged.
    assert http.get("/admin/ps").json()["used_bytes"] == before["used_bytes"]


def test_stream_through_the_backroom_server(http: httpx.Client) -> None:
    resp, events = stream(http, "backroom", max_tokens=12, temperature=0)
    assert resp.status_code == 200
    assert resp.headers["x-edged-served-by"] == "backroom"
    assert events[-1] == "[DONE]"
    assert len([e for e in events if isinstance(e, dict)]) > 2
    assert text_of(events).strip()
    assert all(e["model"] == "backroom" for e in events if isinstance(e, dict))


def test_json_schema_through_the_backroom_server(http: httpx.Client) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
              "required": ["city"]}
    r = chat(http, "backroom", max_tokens=40, temperature=0, messages=[
        {"role": "user", "content": "Which city is the capital of France? Answer in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert r.status_code == 200, r.text
    answer = json.loads(r.json()["choices"][0]["message"]["content"])
    assert isinstance(answer["city"], str)


def test_local_answers_say_who_served_them(http: httpx.Client) -> None:
    r = chat(http, "g")
    assert r.status_code == 200 and r.headers["x-edged-served-by"] == "g"


# -- what is sent -----------------------------------------------------------------------------

def test_tools_and_formats_go_out_natively_with_redactions(
        http: httpx.Client, fake: tuple[FakeOpenAI, Any]) -> None:
    stand_in = fake[0]
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}
    message = ("Call me on +1 415 555 0123 or mail ana.lopez@example.com; "
               "card 4111 1111 1111 1111, order 12345, price 19.99")
    r = http.post("/v1/chat/completions", json={
        "model": "flaky", "messages": [{"role": "user", "content": message}],
        "tools": [tool], "tool_choice": "auto", "max_tokens": 8, "user": "kiosk-7"})
    assert r.status_code == 200 and r.headers["x-edged-served-by"] == "flaky"
    sent = stand_in.received["flaky"][-1]
    assert sent["model"] == "big-flaky"
    assert sent["tools"] == [tool] and sent["tool_choice"] == "auto"
    assert "user" not in sent  # only known OpenAI fields leave the box
    content = sent["messages"][0]["content"]
    assert len(sent["messages"]) == 1  # no edged tool prompt: the server handles tools
    assert "[phone]" in content and "[email]" in content and "[card]" in content
    assert "415" not in content and "example.com" not in content and "4111" not in content
    assert "12345" in content and "19.99" in content
    assert stand_in.headers["flaky"][-1]["Authorization"] == "Bearer sk-test-123"


def test_each_call_is_audited_without_its_text(daemon: RunningDaemon,
                                               http: httpx.Client) -> None:
    assert chat(http, "flaky", messages=[{"role": "user", "content": "secret words"}]
                ).status_code == 200
    out = cli("audit", "export", "--state-dir", str(daemon.state_dir), "--kind", "model.remote")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    mine = [r for r in records if r["data"]["model"] == "flaky"]
    assert mine and mine[-1]["actor"] == f"uid:{os.getuid()}"
    data = mine[-1]["data"]
    assert data["outcome"] == "ok" and data["bytes_sent"] > 0 and data["status"] == 200
    assert "secret words" not in out.stdout and "sent" not in data


# -- faults: the fallback answers, nothing hangs ------------------------------------------------

FAULTS = ("500", "stall", "garbage", "cut")


@pytest.mark.parametrize("mode", FAULTS)
def test_fault_falls_back(mode: str, http: httpx.Client,
                          fake: tuple[FakeOpenAI, Any]) -> None:
    stand_in = fake[0]
    stand_in.modes["flaky"] = mode
    try:
        started = time.monotonic()
        r = chat(http, "flaky")
        assert r.status_code == 200, r.text
        assert r.headers["x-edged-served-by"] == "g"
        assert r.json()["model"] == "g"
        resp, events = stream(http, "flaky")
        assert resp.status_code == 200
        assert resp.headers["x-edged-served-by"] == "g"
        assert events[-1] == "[DONE]" and text_of(events)
        assert time.monotonic() - started < 60  # a stall is cut at the 1s timeout
    finally:
        stand_in.modes["flaky"] = "ok"


def test_unreachable_server_falls_back(http: httpx.Client) -> None:
    r = chat(http, "down")
    assert r.status_code == 200 and r.headers["x-edged-served-by"] == "g"
    assert r.headers["x-edged-fallback"] == "unreachable"
    resp, events = stream(http, "down")
    assert resp.headers["x-edged-served-by"] == "g" and events[-1] == "[DONE]"


@pytest.mark.parametrize("mode", ["reset", "stall_mid"])
def test_stream_cut_after_first_token_ends_with_an_error(
        mode: str, http: httpx.Client, fake: tuple[FakeOpenAI, Any]) -> None:
    stand_in = fake[0]
    stand_in.modes["flaky"] = mode
    try:
        resp, events = stream(http, "flaky")
    finally:
        stand_in.modes["flaky"] = "ok"
    assert resp.status_code == 200 and resp.headers["x-edged-served-by"] == "flaky"
    assert text_of(events) == "Hello from"
    assert events[-2]["error"]["code"] == "remote_stream_cut"
    assert events[-1] == "[DONE]"


def test_without_a_fallback_the_error_is_clear(http: httpx.Client,
                                               fake: tuple[FakeOpenAI, Any]) -> None:
    fake[0].modes["nofb"] = "500"
    r = chat(http, "nofb")
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "remote_unavailable" and error["reason"] == "server_error"
    assert "nofb" in error["message"] and "500" in error["message"]


def test_a_request_the_server_refuses_is_the_clients_error(
        http: httpx.Client, fake: tuple[FakeOpenAI, Any]) -> None:
    fake[0].modes["nofb"] = "400"
    r = chat(http, "nofb")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "remote_rejected"
    assert "bad temperature" in r.json()["error"]["message"]


def test_bad_input_is_refused_before_anything_leaves(
        http: httpx.Client, fake: tuple[FakeOpenAI, Any]) -> None:
    before = fake[0].hits("flaky")
    r = http.post("/v1/chat/completions", json={"model": "flaky", "messages": []})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    assert fake[0].hits("flaky") == before


# -- the breaker --------------------------------------------------------------------------------

def test_breaker_opens_and_skips_the_dead_server(http: httpx.Client,
                                                 fake: tuple[FakeOpenAI, Any]) -> None:
    stand_in = fake[0]
    stand_in.modes["breaker"] = "500"
    for _ in range(2):
        assert chat(http, "breaker").headers["x-edged-served-by"] == "g"
    assert stand_in.hits("breaker") == 2
    r = chat(http, "breaker")
    assert r.status_code == 200 and r.headers["x-edged-served-by"] == "g"
    assert r.headers["x-edged-fallback"] == "breaker_open"
    assert stand_in.hits("breaker") == 2  # not asked again while open
    health = http.get("/health").json()
    assert health["status"] == "degraded"
    part = health["remote_models"]["breaker"]
    assert part["breaker"] == "open" and part["reachable"] is False
    assert part["fallbacks"] == 3


def test_one_probe_closes_the_breaker(http: httpx.Client,
                                      fake: tuple[FakeOpenAI, Any]) -> None:
    stand_in = fake[0]
    stand_in.modes["probe"] = "500"
    assert chat(http, "probe").headers["x-edged-served-by"] == "g"
    # open_for 0s: half-open at once, and the next request is the probe
    assert http.get("/health").json()["remote_models"]["probe"]["breaker"] == "half_open"
    assert chat(http, "probe").headers["x-edged-served-by"] == "g"  # the probe failed
    stand_in.modes["probe"] = "ok"
    r = chat(http, "probe")
    assert r.headers["x-edged-served-by"] == "probe"
    part = http.get("/health").json()["remote_models"]["probe"]
    assert part["breaker"] == "closed" and part["reachable"] is True
    assert part["failures"] == 0 and part["latency_ms"] is not None


def test_metrics_count_calls_fallbacks_and_who_served(http: httpx.Client) -> None:
    text = http.get("/metrics").text
    assert 'edged_remote_fallbacks_total{model="breaker",reason="breaker_open"}' in text
    assert 'edged_served_total{model="backroom",served_by="backroom"}' in text
    assert 'edged_remote_calls_total{model="flaky",outcome="ok"}' in text
    assert 'edged_remote_breaker_state{model="breaker"} 2.0' in text
    assert 'edged_remote_redactions_total{model="flaky",pattern="card"}' in text


def test_status_shows_each_remote(daemon: RunningDaemon) -> None:
    out = cli("status", socket_path=daemon.socket)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if "remote_models" in x)
    assert "backroom={" in line and "breaker=closed" in line


# -- embeddings and the routes a remote does not serve ---------------------------------------------

def test_embeddings_through_a_remote(http: httpx.Client, fake: tuple[FakeOpenAI, Any]) -> None:
    r = http.post("/v1/embeddings", json={"model": "flaky", "input": ["ab", "mail x@y.org"]})
    assert r.status_code == 200, r.text
    assert r.headers["x-edged-served-by"] == "flaky" and r.json()["model"] == "flaky"
    assert fake[0].received["flaky"][-1]["input"] == ["ab", "mail [email]"]
    fake[0].modes["nofb"] = "500"
    r = http.post("/v1/embeddings", json={"model": "nofb", "input": "x"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "remote_unavailable"


def test_completions_and_responses_say_remote_is_unsupported(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": "flaky", "prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "remote_unsupported"
    r = http.post("/v1/responses", json={"model": "flaky", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = http.post("/admin/models/flaky/load", json={})
    assert r.status_code == 400 and r.json()["error"]["code"] == "remote_unsupported"
    assert http.post("/v1/completions", json={"model": "g", "prompt": "Hi", "max_tokens": 2}
                     ).headers["x-edged-served-by"] == "g"


def test_a_failed_stream_start_is_audited_with_its_reason(
        daemon: RunningDaemon, http: httpx.Client, fake: tuple[FakeOpenAI, Any]) -> None:
    fake[0].modes["nofb"] = "stall"
    resp, _events = stream(http, "nofb")
    assert resp.status_code == 503
    out = cli("audit", "export", "--state-dir", str(daemon.state_dir), "--kind", "model.remote")
    records = [json.loads(line)["data"] for line in out.stdout.splitlines()]
    last = [r for r in records if r["model"] == "nofb"][-1]
    assert last["outcome"] == "timeout" and last["stream"] is True


def test_with_log_prompts_the_audit_has_what_was_sent(
        edged: Callable[..., RunningDaemon], fake: tuple[FakeOpenAI, Any]) -> None:
    """Its own daemon: audit.log_prompts on, one remote alias and no local model."""
    fake[0].modes["logged"] = "ok"
    d = edged({"audit": {"log_prompts": True}, "models": {"logged": {
        "format": "openai", "base_url": fake[0].url("logged"), "model": "m"}}})
    d.client.post("/v1/chat/completions", {"model": "logged", "messages": [
        {"role": "user", "content": "reach me at kim@example.org about order 77"}]})
    out = cli("audit", "export", "--state-dir", str(d.state_dir), "--kind", "model.remote")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.splitlines()[-1])["data"]
    assert data["sent"] == [{"role": "user", "content": "reach me at [email] about order 77"}]
    assert data["redactions"] == {"email": 1}
    assert "kim@example.org" not in out.stdout
