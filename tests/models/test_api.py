"""The OpenAI-compatible API through the socket, with the official SDK, on the bundled
model; the model CLI verbs. One daemon for the whole module."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from edged.client import ApiError
from edged.models.contract import PRIORITY_NORMAL
from edged.models.requests import parse_chat, parse_completion
from tests.edgedtest import (
    RunningDaemon,
    base_config,
    bundled_alias,
    bundled_daemon,
    cli,
    deep_merge,
    running,
    short_tmpdir,
)

INVENTORY = {"type": "function", "function": {
    "name": "check_inventory", "description": "Check how many units of a product a store has",
    "parameters": {"type": "object", "properties": {
        "sku": {"type": "string", "maxLength": 12}, "store": {"type": "integer"}},
        "required": ["sku", "store"]}}}
QUOTE = {"type": "function", "function": {
    "name": "create_price_quote", "description": "Quote a price for a quantity of a product",
    "parameters": {"type": "object", "properties": {
        "sku": {"type": "string", "maxLength": 12}, "quantity": {"type": "integer"}},
        "required": ["sku", "quantity"]}}}


@pytest.fixture(scope="module")
def daemon(bundled_model_path: Path) -> Iterator[RunningDaemon]:
    with bundled_daemon(context=1024, embedding=True) as d:
        yield d


@pytest.fixture(scope="module")
def sdk(daemon: RunningDaemon) -> Iterator[openai.OpenAI]:
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)))
    with http:
        yield openai.OpenAI(base_url="http://edged/v1", api_key="x", http_client=http)


def test_chat(sdk: openai.OpenAI) -> None:
    r = sdk.chat.completions.create(
        model="g", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=20, temperature=0)
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.completion_tokens > 0


def test_stream(sdk: openai.OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(
        model="g", messages=[{"role": "user", "content": "What is the capital of Italy?"}],
        max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    pieces = [d.content for d in deltas if d.content]
    assert len(pieces) > 1
    assert "Rome" in "".join(pieces)
    # Held-back text (a possible turn marker) and the tokens of the stop string that ended
    # the turn are counted but not sent, so pieces <= tokens.
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= len(pieces)
    assert not pieces[0].startswith(" ")


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "create_price_quote"}}])
def test_tool_call_fits_the_schema(sdk: openai.OpenAI, choice: Any) -> None:
    r = sdk.chat.completions.create(
        model="g", messages=[{"role": "user", "content": "Quote 3 of the blue kettle K-100."}],
        tools=[INVENTORY, QUOTE], tool_choice=choice, max_tokens=60, temperature=0)
    assert r.choices[0].finish_reason == "tool_calls"
    calls = r.choices[0].message.tool_calls or []
    assert len(calls) == 1
    call = calls[0].function  # type: ignore[union-attr]
    if isinstance(choice, dict):
        assert call.name == "create_price_quote"
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in (INVENTORY, QUOTE)}
    jsonschema.validate(json.loads(call.arguments), schema[call.name])


def test_streamed_tool_call(sdk: openai.OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(
        model="g", messages=[{"role": "user", "content": "Is K-100 in stock at store 4?"}],
        tools=[INVENTORY], tool_choice="required", max_tokens=60, temperature=0, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert calls[0].function is not None and calls[0].function.name == "check_inventory"
    assert calls[0].id and all(tc.index == 0 for tc in calls)
    fragments = [tc.function.arguments or "" for tc in calls[1:] if tc.function is not None]
    assert len(fragments) > 1  # the arguments arrive as they are written
    jsonschema.validate(json.loads("".join(fragments)),
                        INVENTORY["function"]["parameters"])  # type: ignore[index]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_response_format_json_schema(sdk: openai.OpenAI) -> None:
    # maxLength bounds what a base model may ramble inside a string (docs/models.md).
    text = {"type": "string", "maxLength": 40}
    schema = {"type": "object", "properties": {"city": text, "country": text},
              "required": ["city", "country"]}
    r = sdk.chat.completions.create(
        model="g", messages=[{"role": "user", "content": "Give me a city and its country."}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        max_tokens=60, temperature=0)
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), schema)


def test_embeddings(sdk: openai.OpenAI) -> None:
    # The SDK asks for base64 by default; ask for floats too.
    e = sdk.embeddings.create(model="g", input=["a red kettle", "a crimson kettle", "tax law"])
    assert len(e.data) == 3
    vectors = [d.embedding for d in e.data]
    assert all(abs(sum(x * x for x in v) - 1) < 1e-3 for v in vectors)  # normalised
    floats = sdk.embeddings.create(model="g", input="a red kettle", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)


def test_completions(sdk: openai.OpenAI) -> None:
    r = sdk.completions.create(model="g", prompt="Question: What is the capital of France?\n"
                               "Answer:", max_tokens=5, temperature=0)
    assert "Paris" in r.choices[0].text


def test_models_list(sdk: openai.OpenAI, daemon: RunningDaemon) -> None:
    ids = [m.id for m in sdk.models.list()]
    assert ids == ["g"]
    item = daemon.client.get("/v1/models")["data"][0]
    assert item["size_bytes"] == 253113024
    assert item["estimated_bytes"] > item["size_bytes"] * 0.9
    assert item["state"] in ("loaded", "unloaded")


def test_unknown_alias_is_404(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert "nope" in str(e.value) and "known: g" in str(e.value)


HI = {"model": "g", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
TOOL_F = {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(("body", "field"), [
    ({"model": "g"}, "messages"),
    ({"model": "g", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": "g", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
     "temperature"),
    ({"model": "g", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required",
      "tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ({"model": "g", "messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "yaml"}}, "response_format.type"),
    ({**HI, "tools": [TOOL_F], "tool_choice": {"type": "function", "function": "f"}},
     "tool_choice.function"),
    ({**HI, "tools": [TOOL_F], "tool_choice": {"type": "function", "function": 5}},
     "tool_choice.function"),
    ({**HI, "tools": [TOOL_F], "tool_choice": "sometimes"},
     "tool_choice: expected none, auto, required"),
    ({**HI, "tool_choice": "required"}, "tool_choice"),
    ({**HI, "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({**HI, "stop": ""}, "stop"),
    ({**HI, "stop": ["\n", ""]}, "stop"),
    ({**HI, "n": 2}, "n"),
    ({"model": "g", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     "messages[0].content[1]"),
    ({"model": "g", "messages": [{"role": "user", "content": [1, 2]}]}, "messages[0].content[0]"),
    ({"model": "g", "messages": [{"role": "user", "content": "x"},
                                 {"role": "assistant", "content": None, "tool_calls": "x"}]},
     "messages[1].tool_calls"),
    ({"model": "g", "messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({**HI, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": ["a", "b"]}}}]},
     "tools[0].function.parameters.properties"),
    ({**HI, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": 3}}}]},
     "tools[0].function.parameters.properties"),
])
def test_bad_fields_are_400_naming_the_field(daemon: RunningDaemon, body: dict[str, Any],
                                             field: str) -> None:
    with pytest.raises(ApiError) as e:
        daemon.client.post("/v1/chat/completions", body)
    assert e.value.status == 400
    assert e.value.message.startswith(field)


def test_cli_load_pin_ps_unload(daemon: RunningDaemon) -> None:
    loaded = cli("load", "g", "--pin", "--json", socket_path=daemon.socket)
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["pinned"] is True
    ps = cli("ps", socket_path=daemon.socket)
    assert ps.returncode == 0 and "g " in ps.stdout and "yes" in ps.stdout
    listing = cli("models", socket_path=daemon.socket)
    assert "loaded" in listing.stdout
    gone = cli("unload", "g", socket_path=daemon.socket)
    assert gone.returncode == 0 and "unloaded" in gone.stdout
    assert daemon.client.get("/admin/ps")["models"] == []
    missing = cli("load", "nope", socket_path=daemon.socket)
    assert missing.returncode == 1 and "unknown model 'nope'" in missing.stderr


def test_health_and_metrics_show_models(daemon: RunningDaemon) -> None:
    daemon.client.post("/v1/completions", {"model": "g", "prompt": "Hi", "max_tokens": 2})
    health = daemon.client.get("/health")["models"]
    assert health["loaded"] == ["g"] and health["budget_bytes"] == 2 * 1024**3
    text = daemon.client.get("/metrics")
    for family in ("edged_model_load_seconds_count", "edged_model_ttft_seconds_count",
                   "edged_budget_used_bytes", "edged_model_queue_wait_seconds_count"):
        assert f'{family}' in text


def test_completions_field_checks(daemon: RunningDaemon) -> None:
    for body, field in (({"stop": ""}, "stop"), ({"n": 3}, "n")):
        with pytest.raises(ApiError) as e:
            daemon.client.post("/v1/completions", {"model": "g", "prompt": "Hi", **body})
        assert e.value.status == 400 and e.value.message.startswith(field)


def test_priority_is_not_client_settable() -> None:
    # Ignored like any unknown field: requests over /v1 run at normal priority, so a kiosk
    # client cannot jump ahead of the clinic agent.
    for body in ({"model": "g", "prompt": "Hi", "priority": 0},
                 {**HI, "priority": 0}):
        parse = parse_completion if "prompt" in body else parse_chat
        assert parse(body).params.priority == PRIORITY_NORMAL


def test_an_assistant_tool_call_message_may_have_null_content(daemon: RunningDaemon) -> None:
    call = {"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}
    r = daemon.client.post("/v1/chat/completions", {"model": "g", "max_tokens": 1, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]})
    assert r["choices"][0]["message"]["role"] == "assistant"


def test_models_retrieve(sdk: openai.OpenAI) -> None:
    model = sdk.models.retrieve("g")
    assert model.id == "g" and model.object == "model"
    with pytest.raises(openai.NotFoundError) as e:
        sdk.models.retrieve("nope")
    assert e.value.status_code == 404 and "unknown model 'nope'" in str(e.value)


def test_embeddings_usage_and_dimensions(daemon: RunningDaemon) -> None:
    one = daemon.client.post("/v1/embeddings", {"model": "g", "input": "hello"})
    two = daemon.client.post("/v1/embeddings", {"model": "g", "input": ["hello", "the red fox"]})
    assert 0 < one["usage"]["prompt_tokens"] < two["usage"]["prompt_tokens"]
    assert two["usage"]["total_tokens"] == two["usage"]["prompt_tokens"]
    size = len(one["data"][0]["embedding"])
    same = daemon.client.post("/v1/embeddings", {"model": "g", "input": "hi", "dimensions": size})
    assert len(same["data"][0]["embedding"]) == size
    with pytest.raises(ApiError) as e:
        daemon.client.post("/v1/embeddings", {"model": "g", "input": "hi", "dimensions": 8})
    assert e.value.status == 400 and e.value.message.startswith("dimensions")


def test_models_list_before_the_package_is_assembled(bundled_model_path: Path) -> None:
    tmp = short_tmpdir()
    state = tmp / "st"
    config = deep_merge(base_config(state), {"models": {
        "cache_dir": str(tmp / "empty"), "p": bundled_alias()}})
    try:
        with running(config, state) as d:
            item = d.client.get("/v1/models")["data"][0]
            assert item["size_bytes"] == 253113024
            assert item["estimated_bytes"] > item["size_bytes"] * 0.9
            assert not (tmp / "empty").exists()  # described, not assembled
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
