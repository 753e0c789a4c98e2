"""A client's tool loop against the bundled model over the socket: user -> call -> result ->
answer, streamed and not, in today's tools and the legacy functions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from edged.client import ApiError
from tests.edgedtest import (
    RunningDaemon,
    bundled_daemon,
)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
RESULT = '{"city": "Paris", "temperature_c": 18, "sky": "sunny"}'


@pytest.fixture(scope="module")
def daemon(bundled_model_path: Path) -> Iterator[RunningDaemon]:
    with bundled_daemon(context=1024) as d:
        yield d


@pytest.fixture(scope="module")
def sdk(daemon: RunningDaemon) -> Iterator[openai.OpenAI]:
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)))
    with http:
        yield openai.OpenAI(base_url="http://edged/v1", api_key="x", http_client=http)


def called(sdk: openai.OpenAI) -> list[dict[str, Any]]:
    """The conversation up to the tool's result, the call made by the model itself."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "What's the weather in Paris?"}]
    r = sdk.chat.completions.create(model="g", messages=messages,  # type: ignore[arg-type]
                                    tools=[WEATHER], tool_choice="required",  # type: ignore[list-item]
                                    max_tokens=40, temperature=0)
    message = r.choices[0].message
    assert message.tool_calls
    return [*messages, message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": RESULT}]


def assert_words(answer: str) -> None:
    """An answer, not the call or the result copied back."""
    assert answer and answer == answer.strip()
    assert "{" not in answer and '"name"' not in answer and answer not in RESULT


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_the_loop_ends_in_words(sdk: openai.OpenAI, temperature: float) -> None:
    r = sdk.chat.completions.create(model="g", messages=called(sdk),  # type: ignore[arg-type]
                                    tools=[WEATHER], max_tokens=40,  # type: ignore[list-item]
                                    temperature=temperature, seed=7)
    choice = r.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert_words(choice.message.content or "")


def test_the_streamed_answer_with_tools_comes_piece_by_piece(sdk: openai.OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(
        model="g", messages=called(sdk), tools=[WEATHER],  # type: ignore[arg-type,list-item]
        max_tokens=40, temperature=0, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    pieces = [d.content for d in deltas if d.content]
    assert len(pieces) > 2
    assert_words("".join(pieces))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_legacy_functions_round_trip(daemon: RunningDaemon) -> None:
    fn = WEATHER["function"]
    ask = {"model": "g", "functions": [fn], "max_tokens": 40, "temperature": 0,
           "messages": [{"role": "user", "content": "What's the weather in Paris?"}]}
    r = daemon.client.post("/v1/chat/completions",
                           {**ask, "function_call": {"name": "get_weather"}})
    choice = r["choices"][0]
    assert choice["finish_reason"] == "function_call" and "tool_calls" not in choice["message"]
    call = choice["message"]["function_call"]
    assert call["name"] == "get_weather" and json.loads(call["arguments"])["city"]
    ask["messages"] += [choice["message"],
                        {"role": "function", "name": "get_weather", "content": RESULT}]
    answer = daemon.client.post("/v1/chat/completions", ask)["choices"][0]
    assert answer["finish_reason"] in ("stop", "length")
    assert_words(answer["message"]["content"])


def test_a_forced_call_cut_short_keeps_the_shape_of_a_call(daemon: RunningDaemon) -> None:
    ask = {"model": "g", "tools": [WEATHER], "temperature": 0,
           "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
           "messages": [{"role": "user", "content": "Weather for a long city name please"}]}
    r = daemon.client.post("/v1/chat/completions", {**ask, "max_tokens": 12})
    choice = r["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    with pytest.raises(ApiError) as e:  # too short to even name the tool
        daemon.client.post("/v1/chat/completions", {**ask, "max_tokens": 2})
    assert e.value.status == 400 and e.value.code == "tool_call_incomplete"
    assert e.value.message.startswith("max_tokens")
