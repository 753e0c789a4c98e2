"""A chat generation's pieces -> what the client is told, as soon as it is known.

Under a tool grammar the output is either plain text or one call written as
``{"name": ..., "arguments": {...}}`` (the text branch may not open with ``{``), so the first
character settles which: text is passed on piece by piece, and a call is announced once its
name is written and its arguments passed on as they grow, the way OpenAI streams
``tool_calls``. The same reading serves whole answers, streamed ones and the Responses API,
so they cannot disagree.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from edged.errors import BadRequest
from edged.models.chat_format import Reply
from edged.models.contract import Generation
from edged.models.structured import Tool

_HEAD = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_TAIL = re.compile(r"\s*\}?\s*\Z")  # the call's own closing brace, possibly still to come


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class CallStart:
    id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    text: str  # a fragment; the fragments together are the arguments' JSON


Event = Text | CallStart | CallArguments


@dataclass(frozen=True)
class Call:
    id: str
    name: str
    arguments: str  # JSON text; cut short when the answer was (finish_reason "length")


@dataclass(frozen=True)
class Answer:
    text: str | None
    call: Call | None
    finish_reason: str  # stop | length | tool_calls


class Output:
    def __init__(self, stops: Sequence[str], tools: Sequence[Tool], calls: bool) -> None:
        """``calls``: the grammar lets the model write a call (tool mode auto or required)."""
        self._reply = Reply(stops)
        self._tools = {t.name for t in tools}
        self._calls = calls
        self._kind: str | None = None if calls else "text"  # text | call
        self._raw = ""  # a call's text so far
        self._id = f"call_{secrets.token_hex(12)}"
        self._name: str | None = None
        self._announced = False
        self._sent = 0  # characters of the arguments passed on
        self._text: list[str] = []

    def feed(self, piece: str) -> list[Event]:
        return self._read(self._reply.feed(piece))

    def end(self, gen: Generation) -> tuple[list[Event], Answer]:
        """The events still owed, and the answer as a whole."""
        events = self._read(self._reply.end(gen.finish_reason))
        if self._kind != "call":
            text = "".join(self._text).rstrip()
            finish = "stop" if gen.finish_reason == "cancelled" else gen.finish_reason
            return events, Answer(text, None, finish)
        complete = self._complete_call()
        if complete is None and self._name is None:
            raise BadRequest(f"max_tokens: the answer was cut off after "
                             f"{gen.completion_tokens} tokens, before the tool call named its "
                             "tool; allow more tokens", code="tool_call_incomplete")
        assert self._name is not None
        if not self._announced:
            events.append(CallStart(self._id, self._name))
            self._announced = True
        arguments = complete if complete is not None else self._arguments()
        if arguments.startswith(self._shown()) and len(arguments) > self._sent:
            events.append(CallArguments(arguments[self._sent:]))
            self._sent = len(arguments)
        finish = "tool_calls" if complete is not None else "length"
        return events, Answer(None, Call(self._id, self._name, arguments), finish)

    def _read(self, text: str) -> list[Event]:
        if not text:
            return []
        if self._kind is None:
            self._kind = "call" if text.startswith("{") else "text"
        if self._kind == "text":
            self._text.append(text)
            return [Text(text)]
        self._raw += text
        events: list[Event] = []
        if self._name is None:
            head = _HEAD.match(self._raw)
            if head is None or json.loads(f'"{head.group(1)}"') not in self._tools:
                return events
            self._name = json.loads(f'"{head.group(1)}"')
            events.append(CallStart(self._id, self._name))
            self._announced = True
        arguments = self._arguments()
        if len(arguments) > self._sent:
            events.append(CallArguments(arguments[self._sent:]))
            self._sent = len(arguments)
        return events

    def _shown(self) -> str:
        return self._arguments()[:self._sent]

    def _arguments(self) -> str:
        """The arguments' text written so far, less what may be the call's closing brace."""
        head = _HEAD.match(self._raw)
        if head is None:
            return ""
        rest = self._raw[head.end():]
        tail = _TAIL.search(rest)
        return rest[:tail.start()] if tail is not None else rest

    def _complete_call(self) -> str | None:
        """The arguments' JSON text when the call is whole and names a tool, else None."""
        try:
            call = json.loads(self._raw)
        except ValueError:
            return None
        if not isinstance(call, dict) or call.get("name") not in self._tools:
            return None
        self._name = self._name or str(call["name"])
        arguments = self._arguments()
        try:
            json.loads(arguments)
        except ValueError:
            return json.dumps(call.get("arguments", {}))
        return arguments
