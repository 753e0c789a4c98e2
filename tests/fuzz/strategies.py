"""Hypothesis strategies for hostile request bodies, queries and headers."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# A JSON integer past Python's int-string limit: written into the text after json.dumps
# (hypothesis cannot even show such an int).
HUGE = "\u0000huge\u0000"
HUGE_TEXT = b"9" * 4400
NUMBERS = st.one_of(st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.just(2**63), st.just(-(2**63) - 1), st.just(HUGE),
                    st.floats(allow_nan=False, allow_infinity=False))
TEXT = st.one_of(st.text(max_size=40), st.text(alphabet=st.characters(
    min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.sampled_from(["", " ", "gemma3-270m", "kiosk", "clinic", "auto", "none", "required",
                     "json_object", "json_schema", "user", "system", "assistant", "tool"]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


DEEP_MARK = "\u0000deep\u0000"
DEEP_TEXT = b"[" * 3000 + b"]" * 3000
DEEP = st.sampled_from([nested(200), DEEP_MARK])
VALUES = st.one_of(JSON, DEEP)

MESSAGE = st.fixed_dictionaries({"role": st.one_of(TEXT, VALUES), "content": st.one_of(
    TEXT, VALUES)}, optional={"tool_calls": VALUES, "name": VALUES, "tool_call_id": VALUES})
TOOL = st.fixed_dictionaries({"type": st.one_of(st.just("function"), VALUES), "function":
    st.one_of(VALUES, st.fixed_dictionaries({"name": st.one_of(TEXT, VALUES)}, optional={
        "parameters": st.one_of(VALUES, st.fixed_dictionaries({
            "type": st.one_of(st.just("object"), VALUES)}, optional={
            "properties": VALUES, "required": VALUES})), "description": VALUES}))})
RESPONSE_FORMAT = st.one_of(VALUES, st.fixed_dictionaries({"type": st.one_of(
    st.sampled_from(["json_object", "json_schema", "text"]), VALUES)}, optional={
    "json_schema": st.one_of(VALUES, st.fixed_dictionaries({"schema": VALUES}))}))
SMALL_TOKENS = st.one_of(st.integers(min_value=-2, max_value=4), VALUES)

FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "/v1/chat/completions": {
        "model": st.one_of(st.just("gemma3-270m"), TEXT, VALUES),
        "messages": st.one_of(st.lists(MESSAGE, max_size=3), VALUES),
        "stream": st.one_of(st.booleans(), VALUES), "tools": st.one_of(
            st.lists(TOOL, max_size=2), VALUES),
        "tool_choice": st.one_of(TEXT, VALUES), "response_format": RESPONSE_FORMAT,
        "max_tokens": SMALL_TOKENS, "temperature": VALUES, "stop": VALUES, "seed": VALUES,
        "frequency_penalty": VALUES, "presence_penalty": VALUES, "repeat_penalty": VALUES,
        "cache_prompt": VALUES},
    "/v1/completions": {"model": st.one_of(st.just("gemma3-270m"), TEXT), "prompt": st.one_of(
        TEXT, VALUES), "max_tokens": SMALL_TOKENS, "stream": VALUES, "stop": VALUES},
    "/v1/embeddings": {"model": st.one_of(st.just("gemma3-270m"), TEXT), "input": st.one_of(
        TEXT, st.lists(TEXT, max_size=3), VALUES), "dimensions": VALUES,
        "encoding_format": st.one_of(TEXT, VALUES)},
    "/v1/classify": {"model": st.one_of(st.just("gemma3-270m"), TEXT), "input": VALUES},
    "/v1/agents/kiosk/chat": {"message": st.one_of(TEXT, VALUES),
                              "session_id": st.one_of(TEXT, VALUES), "stream": VALUES},
    "/v1/agents/clinic/chat": {"message": st.one_of(TEXT, VALUES),
                               "session_id": st.one_of(TEXT, VALUES), "stream": VALUES},
    "/admin/models/gemma3-270m/load": {"pin": VALUES},
    "/admin/models/nope/unload": {"x": VALUES},
    "/admin/config": {"format": st.one_of(st.just("edged-config-bundle/1"), VALUES),
                      "version": VALUES, "issued_at": VALUES, "key_id": VALUES,
                      "selector": st.one_of(VALUES, st.fixed_dictionaries(
                          {"devices": VALUES})), "config": VALUES, "signature": VALUES},
    "/admin/sync": {"x": VALUES},
    "/v1/responses": {
        "model": st.one_of(st.just("gemma3-270m"), TEXT, VALUES),
        "input": st.one_of(TEXT, st.lists(st.one_of(MESSAGE, st.fixed_dictionaries({
            "type": st.sampled_from(["function_call", "function_call_output", "reasoning",
                                     "message"])}, optional={
            "call_id": VALUES, "name": VALUES, "arguments": VALUES, "output": VALUES})),
            max_size=3), VALUES),
        "instructions": st.one_of(TEXT, VALUES), "tools": st.one_of(st.lists(
            st.fixed_dictionaries({"type": st.one_of(st.just("function"), VALUES)},
                                  optional={"name": VALUES, "parameters": VALUES}),
            max_size=2), VALUES),
        "tool_choice": VALUES, "text": st.one_of(VALUES, st.fixed_dictionaries(
            {"format": RESPONSE_FORMAT})), "previous_response_id": st.one_of(TEXT, VALUES),
        "max_output_tokens": SMALL_TOKENS, "stream": VALUES, "store": VALUES},
    "/admin/approvals/A-0000000000": {"approve": VALUES},
}


@st.composite
def body(draw: st.DrawFn, route: str) -> bytes:
    """A JSON body for ``route``: its own fields with hostile values, sometimes an unknown
    field, sometimes not an object or not JSON at all."""
    kind = draw(st.sampled_from(["fields", "fields", "fields", "value", "raw"]))
    if kind == "value":
        return dumps(draw(VALUES))
    if kind == "raw":
        return draw(st.sampled_from([b"{", b'{"a": NaN}', b'{"a": Infinity}', b"\xff\xfe",
                                     b'{"a": 1e999}', b'{"a": "\\ud800"}', b"[]", b"null",
                                     b'{"a": ' + b"9" * 5000 + b"}"]))
    fields = FIELDS[route]
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
    doc = {name: draw(fields[name]) for name in chosen}
    if route in ("/v1/chat/completions", "/v1/completions") and draw(st.booleans()):
        doc.setdefault("max_tokens", 2)  # a valid request should not hold the model long
    return dumps(doc)


def dumps(value: Any) -> bytes:
    raw = json.dumps(value).encode()
    return raw.replace(json.dumps(HUGE).encode(), HUGE_TEXT).replace(
        json.dumps(DEEP_MARK).encode(), DEEP_TEXT)


QUERY_VALUES = st.one_of(st.sampled_from(["inf", "-inf", "nan", "1e400", "-1", "0", "1",
                                          "9" * 5000, "%ff", "%00", "true", ""]),
                         st.text(max_size=12))
HEADER_NAMES = st.one_of(st.sampled_from([b"X-Request-Id", b"Content-Type", b"Accept",
                                          b"Authorization", b"X-Edged-Token", b"Expect",
                                          b"Accept-Encoding", b"Connection"]),
                         st.binary(min_size=1, max_size=12))
HEADER_VALUES = st.binary(max_size=200)
