"""Real client libraries over the socket, unchanged, against the bundled model: the openai
SDK (sync, async, Responses), Microsoft Agent Framework (both of its OpenAI clients) and
LangChain. ``tool_choice`` makes the weak model call where it would not on its own: the
point is the protocol, and that each tool loop ends in a text answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.edgedtest import (
    RunningDaemon,
    bundled_daemon,
)

RESULT = {"city": "Paris", "temperature_c": 18, "sky": "sunny"}
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


class City(BaseModel):
    city: str
    country: str


@pytest.fixture(scope="module")
def daemon(bundled_model_path: Path) -> Iterator[RunningDaemon]:
    with bundled_daemon(context=1024, embedding=True) as d:
        yield d


@pytest.fixture(scope="module")
def sdk(http: httpx.Client) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://edged/v1", api_key="x", http_client=http)


@pytest.fixture
async def async_sdk(daemon: RunningDaemon) -> AsyncIterator[openai.AsyncOpenAI]:
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(daemon.socket))
                                 ) as http:
        yield openai.AsyncOpenAI(base_url="http://edged/v1", api_key="x", http_client=http)


def assert_words(text: str) -> None:
    """A text answer, not a call or the tool's result copied back."""
    assert text and text == text.strip() and "{" not in text and '"name"' not in text


def weather(city: str) -> str:
    """Current weather in a city."""
    return json.dumps({**RESULT, "city": city})


# -- the openai SDK ------------------------------------------------------------------------

async def test_async_chat_stream_and_parse(async_sdk: openai.AsyncOpenAI) -> None:
    r = await async_sdk.chat.completions.create(
        model="g", messages=[{"role": "user", "content": "Capital of France?"}],
        max_tokens=16, temperature=0)
    assert r.choices[0].message.content
    stream = await async_sdk.chat.completions.create(
        model="g", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=16,
        temperature=0, stream=True)
    pieces = [c.choices[0].delta.content async for c in stream
              if c.choices and c.choices[0].delta.content]
    assert pieces and not pieces[0].startswith(" ")
    parsed = await async_sdk.chat.completions.parse(
        model="g", messages=[{"role": "user", "content": "Give me a city and its country."}],
        response_format=City, max_tokens=60, temperature=0)
    assert isinstance(parsed.choices[0].message.parsed, City)


def test_async_embeddings_share_the_socket(sdk: openai.OpenAI) -> None:
    e = sdk.embeddings.create(model="g", input=["kettle", "teapot"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == len(e.data[1].embedding) > 0


def test_responses_text_stream_and_parse(sdk: openai.OpenAI) -> None:
    r = sdk.responses.create(model="g", input="What is the capital of France?",
                             instructions="Answer in one sentence.", max_output_tokens=20,
                             temperature=0)
    assert r.status in ("completed", "incomplete") and r.output_text
    assert r.usage is not None and r.usage.output_tokens > 0
    with sdk.responses.stream(model="g", input="Name three colours.", max_output_tokens=20,
                              temperature=0) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") > 1
    # Cut at max_output_tokens the stream ends "incomplete", as OpenAI's does (the SDK's
    # get_final_response() only takes "completed"); either last event holds the response.
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    assert last.response.output_text
    parsed = sdk.responses.parse(model="g", input="Give me a city and its country.",
                                 text_format=City, max_output_tokens=60, temperature=0)
    assert isinstance(parsed.output_parsed, City)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_function_loop_continues_by_previous_response_id(
        sdk: openai.OpenAI, stream: bool) -> None:
    ask: dict[str, Any] = {"model": "g", "tools": [WEATHER], "max_output_tokens": 40,
                           "temperature": 0}
    r = sdk.responses.create(input="What's the weather in Paris?", tool_choice="required",
                             **ask)
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    output = {"type": "function_call_output", "call_id": call.call_id,
              "output": weather(json.loads(call.arguments)["city"])}
    if not stream:
        answer = sdk.responses.create(previous_response_id=r.id, input=[output], **ask)
    else:
        with sdk.responses.stream(previous_response_id=r.id, input=[output], **ask) as s:
            list(s)
            answer = s.get_final_response()
    assert answer.output[0].type == "message"
    assert_words(answer.output_text)


def test_responses_refusals_name_the_field(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        sdk.responses.create(model="g", input="hi", previous_response_id="resp_gone")
    assert e.value.code == "previous_response_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        sdk.responses.create(model="g", input="hi",
                             tools=[{"type": "web_search"}])  # type: ignore[list-item]
    body = e.value.body
    assert isinstance(body, dict) and body["param"] == "tools[0].type"
    assert body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):  # not kept: store false
        kept = sdk.responses.create(model="g", input="hi", store=False, max_output_tokens=4)
        sdk.responses.create(model="g", input="and?", previous_response_id=kept.id)


# -- Microsoft Agent Framework --------------------------------------------------------------

@pytest.mark.parametrize("client_name", ["OpenAIChatCompletionClient", "OpenAIChatClient"])
@pytest.mark.parametrize("stream", [False, True])
async def test_agent_framework_loop_completes(async_sdk: openai.AsyncOpenAI, client_name: str,
                                              stream: bool) -> None:
    from agent_framework import Agent, tool
    from agent_framework import openai as maf_openai

    cities: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        cities.append(city)
        return weather(city)

    client = getattr(maf_openai, client_name)(model="g", async_client=async_sdk)
    agent = Agent(client=client, instructions="You tell people the weather.",
                  tools=[get_weather], default_options={"max_tokens": 60, "temperature": 0})
    options = {"tool_choice": {"mode": "required", "required_function_name": "get_weather"}}
    question = "What's the weather in Paris?"
    if stream:
        run = agent.run(question, stream=True, options=options)
        updates = [update async for update in run]
        text = (await run.get_final_response()).text
        assert len(updates) > 2
    else:
        text = (await agent.run(question, options=options)).text
    assert cities  # the tool ran, its result went back, and the model answered
    assert_words(text)


# -- LangChain ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def http(daemon: RunningDaemon) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket))) as client:
        yield client


def langchain_model(http: httpx.Client, **kw: Any) -> Any:
    from langchain_openai import ChatOpenAI
    return ChatOpenAI(model="g", api_key="x", base_url="http://edged/v1",  # type: ignore[arg-type]
                      temperature=0, max_tokens=60,  # type: ignore[call-arg]
                      http_client=http, **kw)


def test_langchain_bind_tools_loop(http: httpx.Client) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    get_weather = tool(weather)
    llm = langchain_model(http)
    messages: list[Any] = [HumanMessage("What's the weather in Paris?")]
    ai = llm.bind_tools([get_weather], tool_choice="weather").invoke(messages)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "weather"
    call = ai.tool_calls[0]
    messages += [ai, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = llm.bind_tools([get_weather]).invoke(messages)
    assert not final.tool_calls
    assert_words(final.content)
    chunks = list(llm.bind_tools([get_weather]).stream(messages))
    assert len(chunks) > 2
    assert_words("".join(c.content for c in chunks))


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output(http: httpx.Client, method: str) -> None:
    city = langchain_model(http).with_structured_output(City, method=method).invoke(
        "Give me a city and its country.")
    assert isinstance(city, City)


def test_langchain_over_the_responses_api(http: httpx.Client) -> None:
    answer = langchain_model(http, use_responses_api=True).invoke("Capital of France?")
    assert answer.text
