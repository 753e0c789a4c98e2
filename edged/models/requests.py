"""OpenAI request bodies -> what the manager needs. Every error is a 400 naming the field.

Unknown fields are ignored rather than refused: OpenAI clients send options edged does not
implement (``n``, ``user``, ``logprobs``...), and the SDK must work unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edged.errors import BadRequest
from edged.models import structured
from edged.models.contract import PRIORITY_HIGH, PRIORITY_LOW, GenerateParams
from edged.models.structured import Tool
from edged.tomlreader import Table

ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    params: GenerateParams
    stream: bool
    include_usage: bool
    tools: list[Tool] = field(default_factory=list)
    tool_mode: str = "none"  # none | auto | required
    json_output: bool = False


def _stop(t: Table) -> tuple[str, ...]:
    raw = t.raw("stop", None)
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw) and len(raw) <= 8:
        return tuple(raw)
    raise BadRequest("stop: expected a string or a list of up to 8 strings")


def params_from(t: Table, default_max: int) -> GenerateParams:
    max_tokens = t.int("max_completion_tokens", None, min=1, max=1 << 20)
    if max_tokens is None:
        max_tokens = t.int("max_tokens", default_max, min=1, max=1 << 20)
    return GenerateParams(
        max_tokens=max_tokens,
        temperature=t.float("temperature", 0.7, min=0, max=2),
        top_p=t.float("top_p", 0.95, min=0, max=1),
        stop=_stop(t),
        seed=t.int("seed", None),
        priority=t.int("priority", 5, min=PRIORITY_HIGH, max=PRIORITY_LOW),
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
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(f"messages[{i}].content: expected a string or a list of parts")
    return [dict(m, role="system" if m["role"] == "developer" else m["role"]) for m in raw]


def _tools(t: Table) -> list[Tool]:
    raw = t.raw("tools", None) or []
    if not isinstance(raw, list):
        raise BadRequest("tools: expected a list")
    tools = []
    for i, item in enumerate(raw):
        fn = item.get("function") if isinstance(item, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"tools[{i}].function.name: expected a string")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise BadRequest(f"tools[{i}].function.parameters: expected a JSON schema object")
        tools.append(Tool(fn["name"], str(fn.get("description", "")), params))
    return tools


def _tool_mode(t: Table, tools: list[Tool]) -> tuple[str, list[Tool]]:
    choice = t.raw("tool_choice", "auto" if tools else "none")
    if choice in ("none", "auto", "required"):
        return (choice if tools else "none"), tools
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    chosen = [tool for tool in tools if tool.name == name]
    if not chosen:
        raise BadRequest(f"tool_choice: {name or choice!r} is not one of the request's tools")
    return "required", chosen


def _response_grammar(t: Table) -> str | None:
    fmt = t.raw("response_format", None)
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return structured.json_object_grammar()
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema: expected a JSON schema object")
        return structured.schema_grammar(schema, "response_format.json_schema.schema")
    raise BadRequest("response_format.type: expected text, json_object or json_schema")


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    t = Table(body, "", error=BadRequest)
    model = t.str("model")
    messages = _messages(t)
    tool_mode, tools = _tool_mode(t, _tools(t))
    params = params_from(t, 256)
    grammar = _response_grammar(t)
    if tool_mode != "none":
        grammar = structured.tool_grammar(tools, allow_text=tool_mode == "auto")
        prompt = structured.tool_prompt(tools, required=tool_mode == "required")
        messages = [{"role": "system", "content": prompt}, *messages]
    options = t.raw("stream_options", None)
    return ChatRequest(
        model=model, messages=messages,
        params=_with_grammar(params, grammar),
        stream=t.bool("stream", False),
        include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
        tools=tools, tool_mode=tool_mode, json_output=grammar is not None,
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
    return EmbeddingRequest(model, texts, fmt == "base64")


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
