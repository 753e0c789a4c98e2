"""OpenAI request bodies -> what the manager needs. Every error is a 400 naming the field.

Unknown fields are ignored rather than refused: OpenAI clients send options edged does not
implement (``user``, ``logprobs``...), and the SDK must work unchanged. Fields whose silent
dropping would change the answer (``n`` > 1, image parts, an empty stop string) are refused.

There is no ``priority`` field: a /v1 client must not jump ahead of the clinic, so client
requests always run at normal priority; agents set theirs in-process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edged.errors import BadRequest
from edged.models import structured
from edged.models.contract import GenerateParams
from edged.models.structured import Tool
from edged.tomlreader import Table

ROLES = ("system", "user", "assistant", "tool", "developer", "function")
TOOL_ROUNDS = 1  # rounds of tool calls "auto" allows in a row (models.<alias>.tool_rounds)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    params: GenerateParams
    stream: bool
    include_usage: bool
    tools: list[Tool] = field(default_factory=list)
    tool_mode: str = "none"  # none | auto | required
    legacy_functions: bool = False  # asked with functions/function_call: answer in kind
    answer_in_text: bool = False  # tool results are in: "auto" answers in plain text


def _stop(t: Table) -> tuple[str, ...]:
    raw = t.raw("stop", None)
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) \
            or len(stops) > 8:
        raise BadRequest("stop: expected a string or a list of up to 8 strings")
    if "" in stops:  # it would match at once and end every answer empty
        raise BadRequest("stop: an empty string is not a stop sequence")
    return tuple(stops)


def _only_one_choice(t: Table) -> None:
    n = t.raw("n", None)
    if n is not None and (n != 1 or isinstance(n, bool)):
        raise BadRequest(f"n: only 1 is supported, got {n!r}")


def params_from(t: Table, default_max: int) -> GenerateParams:
    _only_one_choice(t)
    max_tokens = t.int("max_completion_tokens", None, min=1, max=1 << 20)
    if max_tokens is None:
        max_tokens = t.int("max_tokens", default_max, min=1, max=1 << 20)
    return GenerateParams(
        max_tokens=max_tokens,
        temperature=t.float("temperature", 0.7, min=0, max=2),
        top_p=t.float("top_p", 0.95, min=0, max=1),
        stop=_stop(t),
        seed=t.int("seed", None),
        frequency_penalty=t.float("frequency_penalty", 0.0, min=-2, max=2),
        presence_penalty=t.float("presence_penalty", 0.0, min=-2, max=2),
        repeat_penalty=t.float("repeat_penalty", 1.0, min=0.5, max=2),  # llama.cpp's name
        cache_prompt=t.bool("cache_prompt", True),  # llama-server's name
    )


def _messages(t: Table) -> list[dict[str, Any]]:
    raw = t.raw("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages: expected a non-empty list of messages")
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}]: expected an object")
        if m.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role: expected one of {', '.join(ROLES)}")
        _check_message(m, f"messages[{i}]")
    return [_current(m, i) for m in raw]


def _current(m: dict[str, Any], i: int) -> dict[str, Any]:
    """A message in today's shape: ``developer`` is ``system``; the legacy ``function_call``
    and ``role: "function"`` are a tool call and its result."""
    role = m["role"]
    if role == "developer":
        return dict(m, role="system")
    if role == "function":
        return {"role": "tool", "name": m.get("name"), "content": m.get("content"),
                "tool_call_id": f"legacy_{m.get('name')}"}
    call = m.get("function_call")
    if role == "assistant" and isinstance(call, dict) and not m.get("tool_calls"):
        return dict(m, tool_calls=[{"id": f"legacy_{call.get('name')}", "type": "function",
                                    "function": call}])
    return m


def _check_message(m: dict[str, Any], key: str) -> None:
    calls = m.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise BadRequest(f"{key}.tool_calls: expected a list of tool calls")
    legacy = m.get("function_call")
    if legacy is not None and not (isinstance(legacy, dict)
                                   and isinstance(legacy.get("name"), str)):
        raise BadRequest(f"{key}.function_call: expected an object with a name and arguments")
    if m["role"] == "function" and not isinstance(m.get("name"), str):
        raise BadRequest(f"{key}.name: a function message needs the name of its function")
    content = m.get("content")
    if content is None:
        if m["role"] == "assistant" and (calls or legacy):
            return
        raise BadRequest(f"{key}.content: expected a string or a list of text parts "
                         "(null only on an assistant message with tool_calls)")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise BadRequest(f"{key}.content[{j}]: only text parts "
                                 '({"type": "text", "text": ...}) are supported')
    elif not isinstance(content, str):
        raise BadRequest(f"{key}.content: expected a string or a list of text parts")


def _tools(t: Table) -> tuple[list[Tool], bool]:
    """The request's tools, and whether they came as the legacy ``functions``."""
    raw = t.raw("tools", None) or []
    legacy = t.raw("functions", None)
    if legacy is not None:
        if raw:
            raise BadRequest("functions: send tools or the legacy functions, not both")
        if not isinstance(legacy, list):
            raise BadRequest("functions: expected a list of function definitions")
        return [function_tool(fn, f"functions[{i}]") for i, fn in enumerate(legacy)], True
    if not isinstance(raw, list):
        raise BadRequest("tools: expected a list")
    tools = []
    for i, item in enumerate(raw):
        if isinstance(item, dict) and item.get("type", "function") != "function":
            raise BadRequest(f"tools[{i}].type: only function tools are supported, got "
                             f"{item.get('type')!r}")
        fn = item.get("function") if isinstance(item, dict) else None
        tools.append(function_tool(fn, f"tools[{i}].function"))
    return tools, False


def function_tool(fn: Any, key: str) -> Tool:
    """A function definition (``name``, ``description``, ``parameters``) as a Tool."""
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise BadRequest(f"{key}.name: expected a string")
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise BadRequest(f"{key}.parameters: expected a JSON schema object")
    if not isinstance(params.get("properties", {}), dict):
        raise BadRequest(f"{key}.parameters.properties: expected an object of property "
                         "schemas")
    description = fn.get("description")
    return Tool(fn["name"], description if isinstance(description, str) else "", params)


def _legacy_choice(t: Table) -> Any:
    """``function_call`` ("none", "auto" or {"name": ...}) as a ``tool_choice``."""
    choice = t.raw("function_call", None)
    if choice is None or choice in ("none", "auto"):
        return choice
    if isinstance(choice, dict) and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequest(f'function_call: expected none, auto or {{"name": ...}}, got {choice!r}')


def tool_rounds(messages: list[dict[str, Any]]) -> int:
    """Rounds of tool calls answered since the last user message."""
    rounds = 0
    for m in reversed(messages):
        if m.get("role") == "user":
            break
        if m.get("role") == "assistant" and m.get("tool_calls"):
            rounds += 1
    return rounds


def _tool_mode(t: Table, tools: list[Tool], legacy: bool) -> tuple[str, list[Tool]]:
    choice = _legacy_choice(t) if legacy else t.raw("tool_choice", None)
    return tool_mode(choice, tools, flat=False)


def tool_mode(choice: Any, tools: list[Tool], flat: bool) -> tuple[str, list[Tool]]:
    """The tool mode (none, auto, required) and the tools a ``tool_choice`` leaves. A named
    function is ``{"type": "function", "function": {"name": ...}}`` in chat completions and
    ``{"type": "function", "name": ...}`` (``flat``) in the Responses API."""
    if choice is None:
        choice = "auto" if tools else "none"
    if choice in ("none", "auto"):
        return (choice if tools else "none"), tools
    if choice == "required":
        return "required", _needs_tools(tools, "'required'")
    shape = '{"type": "function", "name": ...}' if flat else \
        '{"type": "function", "function": {"name": ...}}'
    if not isinstance(choice, dict):
        raise BadRequest(f"tool_choice: expected none, auto, required or {shape}, got "
                         f"{choice!r}")
    key, fn = ("tool_choice", choice) if flat else ("tool_choice.function",
                                                     choice.get("function"))
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise BadRequest(f"{key}: expected {shape}, got {choice!r}")
    chosen = [tool for tool in _needs_tools(tools, "a function") if tool.name == fn["name"]]
    if not chosen:
        raise BadRequest(f"{key}.name: {fn['name']!r} is not one of the request's tools")
    return "required", chosen


def _needs_tools(tools: list[Tool], what: str) -> list[Tool]:
    if not tools:
        raise BadRequest(f"tool_choice: {what} needs tools, and the request has none")
    return tools


def _response_grammar(t: Table) -> str | None:
    fmt = t.raw("response_format", None)
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return format_grammar(kind, schema, "response_format")


def format_grammar(kind: Any, schema: Any, key: str) -> str | None:
    """The grammar for an output format (text, json_object or json_schema); ``key`` names
    the request's field in errors."""
    if kind == "text":
        return None
    if kind == "json_object":
        return structured.json_object_grammar()
    if kind == "json_schema":
        field = f"{key}.json_schema.schema" if key == "response_format" else f"{key}.schema"
        if not isinstance(schema, dict):
            raise BadRequest(f"{field}: expected a JSON schema object")
        return structured.schema_grammar(schema, field)
    raise BadRequest(f"{key}.type: expected text, json_object or json_schema")


def with_tools(messages: list[dict[str, Any]], tools: list[Tool], tool_mode: str,
               params: GenerateParams, grammar: str | None, max_rounds: int
               ) -> tuple[list[dict[str, Any]], GenerateParams, bool]:
    """The messages and params a request with tools runs with: the tool prompt first and the
    grammar of a call (or, ``max_rounds`` rounds after the user spoke, of a prose answer).
    Also whether the answer must be text."""
    rounds = tool_rounds(messages) if tool_mode == "auto" else 0
    in_text = rounds > 0 and rounds >= max_rounds
    if tool_mode != "none":
        grammar = (structured.answer_grammar() if in_text
                   else structured.tool_grammar(tools, allow_text=tool_mode == "auto"))
        prompt = structured.tool_prompt(tools, required=tool_mode == "required",
                                        answer=in_text)
        messages = [{"role": "system", "content": prompt}, *messages]
    return messages, _with_grammar(params, grammar), in_text


def parse_chat(body: dict[str, Any],
               max_rounds: Callable[[str], int] = lambda _alias: TOOL_ROUNDS) -> ChatRequest:
    """``max_rounds``: the model's ``tool_rounds``; after that many rounds of calls since the
    user spoke, "auto" answers in text, so a small model that would call again answers."""
    t = Table(body, "", error=BadRequest)
    model = t.str("model")
    messages = _messages(t)
    tools, legacy = _tools(t)
    if not legacy and t.raw("function_call", None) is not None:
        raise BadRequest("function_call: goes with the legacy functions; with tools, use "
                         "tool_choice")
    tool_mode, tools = _tool_mode(t, tools, legacy)
    params = params_from(t, 256)
    grammar = _response_grammar(t)
    needs_rounds = tool_mode == "auto" and tool_rounds(messages) > 0
    messages, params, in_text = with_tools(messages, tools, tool_mode, params, grammar,
                                           max_rounds(model) if needs_rounds else TOOL_ROUNDS)
    options = t.raw("stream_options", None)
    return ChatRequest(
        model=model, messages=messages, params=params,
        stream=t.bool("stream", False),
        include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
        tools=tools, tool_mode=tool_mode, legacy_functions=legacy, answer_in_text=in_text,
    )


def _with_grammar(params: GenerateParams, grammar: str | None) -> GenerateParams:
    if grammar is None:
        return params
    return GenerateParams(**{**params.__dict__, "grammar": grammar})


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str
    params: GenerateParams
    stream: bool


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    t = Table(body, "", error=BadRequest)
    model = t.str("model")
    prompt = t.raw("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt: expected a string (token arrays and batches are not supported)")
    return CompletionRequest(model, prompt, params_from(t, 16), t.bool("stream", False))


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: list[str]
    base64: bool
    dimensions: int | None = None


def parse_embedding(body: dict[str, Any]) -> EmbeddingRequest:
    t = Table(body, "", error=BadRequest)
    model = t.str("model")
    raw = t.raw("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(s, str) for s in texts):
        raise BadRequest("input: expected a string or a non-empty list of strings "
                         "(token arrays are not supported)")
    if len(texts) > 256:
        raise BadRequest(f"input: {len(texts)} texts; at most 256 per request")
    fmt = t.choice("encoding_format", ("float", "base64"), "float")
    return EmbeddingRequest(model, texts, fmt == "base64", t.int("dimensions", None, min=1))


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
