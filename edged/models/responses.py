"""The Responses API (``POST /v1/responses``): the subset agent frameworks use.

A request becomes the same chat request ``/v1/chat/completions`` runs (messages, tools, a
grammar), so both answer alike; this module reads the Responses shapes in and writes them
out. What is not supported is refused with a 400 naming the field (docs/models.md).

``previous_response_id`` continues a conversation kept here, in memory: the last
``KEPT`` responses stored with ``store`` (the default, as OpenAI's), lost at restart. A
response asked with ``store: false`` is never kept.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edged.errors import BadRequest
from edged.models.contract import GenerateParams, Generation
from edged.models.outputs import Answer, CallArguments, CallStart, Event, Output, Text
from edged.models.requests import (
    ChatRequest,
    format_grammar,
    function_tool,
    tool_mode,
    with_tools,
)
from edged.models.structured import Tool
from edged.tomlreader import Table

KEPT = 256  # responses kept for previous_response_id
_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text", "text")
_SKIPPED_ITEMS = ("reasoning",)  # a reasoning model's notes: nothing this model reads
_REFUSED = {"conversation": "conversations are not supported; use previous_response_id",
            "background": "background responses are not supported"}


class ResponseStore:
    """Conversations of recent responses, by response id; bounded, least recent first out."""

    def __init__(self, size: int = KEPT) -> None:
        self._size = size
        self._items: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    def get(self, ident: str) -> list[dict[str, Any]]:
        messages = self._items.get(ident)
        if messages is None:
            raise BadRequest(f"previous_response_id: {ident!r} is not a response edged still "
                             f"has (it keeps the last {self._size} stored responses, in "
                             "memory, until restart)", code="previous_response_not_found")
        self._items.move_to_end(ident)
        return list(messages)

    def put(self, ident: str, messages: list[dict[str, Any]]) -> None:
        self._items[ident] = messages
        self._items.move_to_end(ident)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


@dataclass
class ResponseRequest:
    chat: ChatRequest
    history: list[dict[str, Any]]  # the conversation so far, as kept for the next response
    store: bool
    echo: dict[str, Any]  # the request's settings, as a response repeats them
    ident: str = field(default_factory=lambda: f"resp_{secrets.token_hex(16)}")
    created: int = field(default_factory=lambda: int(time.time()))


def parse_response(body: dict[str, Any], store: ResponseStore,
                   max_rounds: Callable[[str], int]) -> ResponseRequest:
    t = Table(body, "", error=BadRequest)
    for key, why in _REFUSED.items():
        if body.get(key) not in (None, False):
            raise BadRequest(f"{key}: {why}")
    model = t.str("model")
    previous = t.str("previous_response_id", None)
    history = store.get(previous) if previous is not None else []
    history += _input(t.raw("input"))
    tools = _tools(t.raw("tools", None))
    mode, chosen = tool_mode(t.raw("tool_choice", None), tools, flat=True)
    text = t.raw("text", None)
    fmt = text.get("format") if isinstance(text, dict) else None
    if text is not None and not isinstance(text, dict):
        raise BadRequest("text: expected an object with a format")
    grammar = None
    if fmt is not None:
        if not isinstance(fmt, dict):
            raise BadRequest("text.format: expected an object with a type")
        grammar = format_grammar(fmt.get("type"), fmt.get("schema"), "text.format")
    params = GenerateParams(
        max_tokens=t.int("max_output_tokens", 256, min=1, max=1 << 20),
        temperature=t.float("temperature", 0.7, min=0, max=2),
        top_p=t.float("top_p", 0.95, min=0, max=1))
    instructions = t.str("instructions", None)
    messages = [{"role": "system", "content": instructions}] if instructions else []
    messages, params, in_text = with_tools([*messages, *history], chosen, mode, params,
                                           grammar, max_rounds(model))
    chat = ChatRequest(model=model, messages=messages, params=params,
                       stream=t.bool("stream", False), include_usage=True, tools=chosen,
                       tool_mode=mode, answer_in_text=in_text)
    echo = {"instructions": instructions, "tools": body.get("tools") or [],
            "tool_choice": body.get("tool_choice", "auto"),
            "temperature": params.temperature, "top_p": params.top_p,
            "max_output_tokens": body.get("max_output_tokens"),
            "previous_response_id": previous,
            "text": {"format": fmt if isinstance(fmt, dict) else {"type": "text"}},
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "metadata": body.get("metadata") or {}}
    return ResponseRequest(chat, history, t.bool("store", True), echo)


def _input(raw: Any) -> list[dict[str, Any]]:
    """``input``: a string, or items (messages, function calls, their outputs) -> chat
    messages; a run of function calls is one assistant turn."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise BadRequest("input: expected a string or a non-empty list of input items")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        key = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{key}: expected an object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, key))
        elif kind == "function_call":
            call = {"id": _str(item, "call_id", key), "type": "function", "function": {
                "name": _str(item, "name", key), "arguments": _str(item, "arguments", key)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last["tool_calls"] = [*(last.get("tool_calls") or []), call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _str(item, "call_id", key),
                             "content": _text(item.get("output"), f"{key}.output")})
        elif kind not in _SKIPPED_ITEMS:
            raise BadRequest(f"{key}.type: expected message, function_call or "
                             f"function_call_output, got {kind!r}")
    return messages


def _message(item: dict[str, Any], key: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise BadRequest(f"{key}.role: expected one of {', '.join(_ROLES)}")
    return {"role": "system" if role == "developer" else role,
            "content": _text(item.get("content"), f"{key}.content")}


def _text(content: Any, key: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") in _TEXT_PARTS
                    and isinstance(part.get("text"), str)):
                raise BadRequest(f"{key}[{j}]: only text parts (input_text, output_text) "
                                 "are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest(f"{key}: expected a string or a list of text parts")


def _str(item: dict[str, Any], name: str, key: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise BadRequest(f"{key}.{name}: expected a string")
    return value


def _tools(raw: Any) -> list[Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("tools: expected a list")
    tools = []
    for i, item in enumerate(raw):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind != "function":
            raise BadRequest(f"tools[{i}].type: only function tools are supported, got "
                             f"{kind!r}")
        tools.append(function_tool(item, f"tools[{i}]"))
    return tools


class ResponseEvents:
    """A response and its stream events, from the output's events."""

    def __init__(self, req: ResponseRequest, output: Output, store: ResponseStore) -> None:
        self._req = req
        self._output = output
        self._store = store
        self._seq = 0
        self._item: dict[str, Any] | None = None  # the output item being written
        self._text: list[str] = []

    def opening(self) -> list[dict[str, Any]]:
        shell = self.response("in_progress", [], None)
        return [self._event("response.created", response=shell),
                self._event("response.in_progress", response=shell)]

    def piece(self, text: str) -> list[dict[str, Any]]:
        return [e for event in self._output.feed(text) for e in self._events(event)]

    def end(self, gen: Generation) -> list[dict[str, Any]]:
        events, answer = self._output.end(gen)
        out = [e for event in events for e in self._events(event)]
        if self._item is None:  # an empty answer still has its item
            out += self._events(Text(""))
        final = self.finish(answer, gen)
        out += self._close(final["output"][0])
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return [*out, self._event(kind, response=final)]

    def whole(self, gen: Generation) -> dict[str, Any]:
        """The response to a generation that was not streamed."""
        self._output.feed(gen.text)
        return self.finish(self._output.end(gen)[1], gen)

    def error(self, envelope: dict[str, Any]) -> list[dict[str, Any]]:
        error = envelope.get("error", {})
        return [self._event("error", code=error.get("code"), message=error.get("message"),
                            param=None)]

    def finish(self, answer: Answer, gen: Generation) -> dict[str, Any]:
        """The whole response; kept for previous_response_id when asked to store."""
        item = self._output_item(answer)
        cut = answer.finish_reason == "length"
        response = self.response("incomplete" if cut else "completed", [item], gen)
        if cut:
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        if self._req.store:
            self._store.put(self._req.ident, [*self._req.history, _as_message(answer)])
        return response

    def response(self, status: str, output: list[dict[str, Any]], gen: Generation | None
                 ) -> dict[str, Any]:
        usage = None
        if gen is not None:
            usage = {"input_tokens": gen.prompt_tokens, "output_tokens": gen.completion_tokens,
                     "total_tokens": gen.prompt_tokens + gen.completion_tokens,
                     "input_tokens_details": {"cached_tokens": gen.cached_tokens},
                     "output_tokens_details": {"reasoning_tokens": 0}}
        return {"id": self._req.ident, "object": "response", "created_at": self._req.created,
                "status": status, "model": self._req.chat.model, "output": output,
                "usage": usage, "error": None, "incomplete_details": None,
                "store": self._req.store, "truncation": "disabled", **self._req.echo}

    def _events(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, Text):
            out = []
            if self._item is None:
                self._item = {"type": "message", "id": f"msg_{secrets.token_hex(12)}",
                              "status": "in_progress", "role": "assistant", "content": []}
                out += [self._event("response.output_item.added", output_index=0,
                                    item=self._item),
                        self._event("response.content_part.added", item_id=self._item["id"],
                                    output_index=0, content_index=0, part=_part(""))]
            self._text.append(event.text)
            if event.text:
                out.append(self._event("response.output_text.delta", item_id=self._item["id"],
                                       output_index=0, content_index=0, delta=event.text,
                                       logprobs=[]))
            return out
        if isinstance(event, CallStart):
            self._item = {"type": "function_call", "id": f"fc_{secrets.token_hex(12)}",
                          "call_id": event.id, "name": event.name, "arguments": "",
                          "status": "in_progress"}
            return [self._event("response.output_item.added", output_index=0, item=self._item)]
        assert isinstance(event, CallArguments) and self._item is not None
        return [self._event("response.function_call_arguments.delta", item_id=self._item["id"],
                            output_index=0, delta=event.text)]

    def _close(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        assert self._item is not None
        item["id"] = self._item["id"]
        if item["type"] == "function_call":
            return [self._event("response.function_call_arguments.done", item_id=item["id"],
                                output_index=0, arguments=item["arguments"], name=item["name"]),
                    self._event("response.output_item.done", output_index=0, item=item)]
        text = item["content"][0]["text"]
        return [self._event("response.output_text.done", item_id=item["id"], output_index=0,
                            content_index=0, text=text, logprobs=[]),
                self._event("response.content_part.done", item_id=item["id"], output_index=0,
                            content_index=0, part=item["content"][0]),
                self._event("response.output_item.done", output_index=0, item=item)]

    def _output_item(self, answer: Answer) -> dict[str, Any]:
        status = "incomplete" if answer.finish_reason == "length" else "completed"
        ident = self._item["id"] if self._item is not None else None
        if answer.call is not None:
            return {"type": "function_call", "id": ident or f"fc_{secrets.token_hex(12)}",
                    "call_id": answer.call.id, "name": answer.call.name,
                    "arguments": answer.call.arguments, "status": status}
        return {"type": "message", "id": ident or f"msg_{secrets.token_hex(12)}",
                "status": status, "role": "assistant", "content": [_part(answer.text or "")]}

    def _event(self, kind: str, **data: Any) -> dict[str, Any]:
        self._seq += 1
        return {"type": kind, "sequence_number": self._seq - 1, **data}


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _as_message(answer: Answer) -> dict[str, Any]:
    if answer.call is None:
        return {"role": "assistant", "content": answer.text or ""}
    return {"role": "assistant", "content": None, "tool_calls": [{
        "id": answer.call.id, "type": "function",
        "function": {"name": answer.call.name, "arguments": answer.call.arguments}}]}
