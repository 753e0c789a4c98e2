"""How a chat generation is read and how a tool history is written for the model: pure
functions, no model."""

from __future__ import annotations

import json
import re

import pytest

from edged.errors import BadRequest
from edged.models.chat_format import FORMATS, Reply, message_text
from edged.models.contract import Generation
from edged.models.outputs import Answer, CallArguments, CallStart, Output, Text
from edged.models.requests import parse_chat
from edged.models.structured import Tool, answer_grammar, bounded

INVENTORY = Tool("check_inventory", "Units of a product in a store",
                 {"type": "object", "properties": {"sku": {"type": "string"},
                                                   "store": {"type": "integer"}}})
STOPS = FORMATS["gemma-base"].stops
LOOP = [
    {"role": "user", "content": "Is K-100 in stock at store 4?"},
    {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "check_inventory", "arguments": '{"sku": "K-100", "store": 4}'}}]},
    {"role": "tool", "tool_call_id": "call_a", "content": '{"units": 12}'},
]


def read(output: Output, pieces: list[str], finish: str = "stop") -> tuple[list[object], Answer]:
    events: list[object] = []
    for piece in pieces:
        events += output.feed(piece)
    more, answer = output.end(Generation("".join(pieces), finish, 5, len(pieces)))
    return events + more, answer


def test_an_assistant_turn_keeps_its_text_and_its_calls_in_the_taught_shape() -> None:
    text = message_text(LOOP[1])
    assert text.splitlines() == [
        "Let me look.", '{"name": "check_inventory", "arguments": {"sku": "K-100", "store": 4}}']


def test_a_tool_result_names_the_call_it_answers() -> None:
    prompt = FORMATS["gemma-base"].render(LOOP)
    assert "Tool result (check_inventory): {\"units\": 12}" in prompt
    assert prompt.endswith("\nAssistant:")
    for name in ("gemma", "chatml"):
        assert "Tool result (check_inventory)" in FORMATS[name].render(LOOP)


def test_after_the_tool_round_auto_answers_in_prose() -> None:
    body = {"model": "g", "messages": LOOP, "tools": [{"type": "function", "function": {
        "name": "check_inventory", "parameters": INVENTORY.parameters}}]}
    req = parse_chat(body)
    assert req.answer_in_text and req.params.grammar == answer_grammar()
    more = parse_chat(body, lambda _alias: 2)  # a model allowed two rounds may call again
    assert not more.answer_in_text
    first = parse_chat({**body, "messages": LOOP[:1]})
    assert first.tool_mode == "auto" and not first.answer_in_text


def test_legacy_functions_are_tools_and_their_history_is_a_tool_round() -> None:
    req = parse_chat({"model": "g", "functions": [{"name": "check_inventory",
                                                   "parameters": INVENTORY.parameters}],
                      "function_call": {"name": "check_inventory"},
                      "messages": [{"role": "user", "content": "K-100?"},
                                   {"role": "assistant", "content": None, "function_call": {
                                       "name": "check_inventory", "arguments": "{}"}},
                                   {"role": "function", "name": "check_inventory",
                                    "content": "12 units"}]})
    assert req.legacy_functions and req.tool_mode == "required"
    assert "Tool result (check_inventory): 12 units" in FORMATS["gemma-base"].render(req.messages)


@pytest.mark.parametrize("body, field", [
    ({"functions": [{"name": "f"}], "tools": [{"type": "function", "function": {"name": "f"}}]},
     "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"functions": [{"name": "f"}], "function_call": 3}, "function_call"),
    ({"functions": [{"description": "no name"}]}, "functions[0].name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].name"),
])
def test_legacy_fields_are_checked(body: dict[str, object], field: str) -> None:
    with pytest.raises(BadRequest, match="^" + re.escape(field)):
        parse_chat({"model": "g", "messages": [{"role": "user", "content": "hi"}], **body})


def test_a_reply_has_no_leading_space_and_no_half_marker_when_cut() -> None:
    assert Reply(STOPS).whole(" Hi\nUser", "length") == "Hi"
    assert Reply(STOPS).whole(" Hi\nUs", "length") == "Hi"
    assert Reply(STOPS).whole(" Hi there", "stop") == "Hi there"
    reply = Reply(STOPS)
    shown = [reply.feed(p) for p in (" ", " Hello", "\n", "User", " is", " here")]
    assert "".join(shown) + reply.end("stop") == "Hello\nUser is here"
    assert shown[:3] == ["", "Hello", ""]  # "\n" waits until it is known not to be "\nUser:"


def test_text_streams_as_it_comes() -> None:
    events, answer = read(Output(STOPS, [INVENTORY], calls=True), [" It", " has", " 12."])
    assert events == [Text("It"), Text(" has"), Text(" 12.")]
    assert answer == Answer("It has 12.", None, "stop")


def test_a_call_streams_its_name_then_its_arguments() -> None:
    text = '{"name": "check_inventory", "arguments": {"sku": "K-100", "store": 4}}'
    pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
    events, answer = read(Output(STOPS, [INVENTORY], calls=True), pieces)
    start = events[0]
    assert isinstance(start, CallStart) and start.name == "check_inventory"
    fragments = [e.text for e in events[1:] if isinstance(e, CallArguments)]
    assert len(fragments) > 3 and len(fragments) == len(events) - 1
    assert json.loads("".join(fragments)) == {"sku": "K-100", "store": 4}
    assert answer.call is not None and answer.call.id == start.id
    assert answer.call.arguments == "".join(fragments) and answer.finish_reason == "tool_calls"


def test_a_call_cut_off_is_still_a_call_with_finish_length() -> None:
    events, answer = read(Output(STOPS, [INVENTORY], calls=True),
                          ['{"name": "check_inventory", "arguments": {"sku": "K-10'], "length")
    assert answer.call is not None and answer.finish_reason == "length"
    assert answer.call.arguments == '{"sku": "K-10'
    assert isinstance(events[0], CallStart)


def test_a_call_cut_before_its_name_is_a_clear_error() -> None:
    with pytest.raises(BadRequest, match="max_tokens") as e:
        read(Output(STOPS, [INVENTORY], calls=True), ['{"na'], "length")
    assert e.value.code == "tool_call_incomplete"


def test_free_strings_get_a_bound_and_bounded_ones_keep_theirs() -> None:
    schema = bounded({"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "string", "maxLength": 5},
        "c": {"type": "array", "items": {"type": "string"}},
        "d": {"type": "string", "enum": ["x", "y"]},
        "e": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}})
    props = schema["properties"]
    assert props["a"]["maxLength"] == 128 and props["b"]["maxLength"] == 5
    assert props["c"]["items"]["maxLength"] == 128 and "maxLength" not in props["d"]
    assert props["e"]["anyOf"][0]["maxLength"] == 128


def test_penalties_and_cache_prompt_are_read_and_bounded() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "frequency_penalty": 0.5, "presence_penalty": -1, "repeat_penalty": 1.1,
            "cache_prompt": False}
    params = parse_chat(body).params
    assert (params.frequency_penalty, params.presence_penalty, params.repeat_penalty,
            params.cache_prompt) == (0.5, -1.0, 1.1, False)
    assert parse_chat({**body, "cache_prompt": True}).params.cache_prompt
    for field, value in (("frequency_penalty", 2.5), ("presence_penalty", "x"),
                         ("repeat_penalty", 0), ("cache_prompt", "no")):
        with pytest.raises(BadRequest, match=field):
            parse_chat({**body, field: value})
