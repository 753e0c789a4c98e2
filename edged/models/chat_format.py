"""Chat formats: OpenAI-style messages -> one prompt string, plus the stop strings that end
the model's turn.

The bundled Gemma 3 270M is a *base* model: it has never seen Gemma's turn markers, and
given ``<start_of_turn>`` it babbles. A plain transcript (``User:`` / ``Assistant:``) is
what text on the web looks like, so the base model continues it sensibly; that is the
``gemma-base`` format. Instruction-tuned models use their own template (``gemma``,
``chatml``).

A format renders to parts: the template's own markers, tokenised as special tokens, and the
messages' text, tokenised as plain text, so a client that writes ``<end_of_turn>`` or
``<eos>`` gets those characters, not the control tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Message = dict[str, Any]
Part = tuple[str, bool]  # (text, is the template's own marker)


@dataclass(frozen=True)
class ChatFormat:
    name: str
    parts: Callable[[Sequence[Message]], list[Part]]
    stops: tuple[str, ...]

    def render(self, messages: Sequence[Message]) -> str:
        return "".join(text for text, _ in self.parts(messages))


def message_text(message: Message) -> str:
    """The text of a message as the model reads it: its content, then each tool call it made
    in the shape the tool prompt teaches (``{"name": ..., "arguments": {...}}``, one a line),
    so the model sees its own earlier calls as it was told to write them."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    text = str(content).strip() if content is not None else ""
    calls = [call_line(c) for c in message.get("tool_calls") or () if isinstance(c, dict)]
    return "\n".join(part for part in (text, *calls) if part)


def call_line(call: Message) -> str:
    """One OpenAI ``tool_calls`` item as the JSON line a model writes to make that call."""
    fn = call.get("function", call)
    fn = fn if isinstance(fn, dict) else {}
    raw = fn.get("arguments", {})
    arguments: Any = raw
    if isinstance(raw, str):
        try:
            arguments = json.loads(raw) if raw.strip() else {}
        except ValueError:  # the client's own text: show it as it was sent
            arguments = raw
    return json.dumps({"name": fn.get("name"), "arguments": arguments}, ensure_ascii=False)


def tool_names(messages: Sequence[Message]) -> dict[str, str]:
    """Call id -> tool name, from the assistant messages' ``tool_calls``."""
    names: dict[str, str] = {}
    for m in messages:
        for c in m.get("tool_calls") or ():
            fn = c.get("function") if isinstance(c, dict) else None
            if isinstance(fn, dict) and isinstance(c.get("id"), str):
                names[c["id"]] = str(fn.get("name", ""))
    return names


def _turns(messages: Sequence[Message]) -> list[tuple[str, str]]:
    """(role, text) per message; a tool result says what it is and names the call it
    answers, so a model that made two calls can tell their results apart."""
    names = tool_names(messages)
    turns = []
    for m in messages:
        role = str(m.get("role", "user"))
        text = message_text(m)
        if role == "tool":
            call_id = m.get("tool_call_id")
            name = m.get("name") or (names.get(call_id, "") if isinstance(call_id, str) else "")
            text = f"Tool result ({name}): {text}" if name else f"Tool result: {text}"
        turns.append((role, text))
    return turns


# A base model learns the shape of a turn from the transcript itself: once a tool result is in
# it, two worked rounds (call, result, an answer in words) show it how a round ends; without
# them, it copies the call or the result back as its answer. Two of different shapes, so it
# does not copy one answer's wording.
_TOOL_ROUND_DEMO: list[Message] = [
    {"role": "user", "content": "What time is it in Tokyo?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "demo", "type": "function",
        "function": {"name": "world_clock", "arguments": '{"city": "Tokyo"}'}}]},
    {"role": "tool", "tool_call_id": "demo", "content": '{"city": "Tokyo", "time": "14:05"}'},
    {"role": "assistant", "content": "It is 14:05 in Tokyo."},
    {"role": "user", "content": "Can you book a table for two at Luigi's tonight?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "demo2", "type": "function",
        "function": {"name": "book_table",
                     "arguments": '{"restaurant": "Luigi\'s", "people": 2}'}}]},
    {"role": "tool", "tool_call_id": "demo2",
     "content": '{"booked": false, "reason": "full tonight", "next_free": "tomorrow 19:30"}'},
    {"role": "assistant",
     "content": "Sorry, Luigi's is full tonight. The next free table is tomorrow at 19:30."},
]


def _transcript(messages: Sequence[Message]) -> list[Part]:
    # Plain text throughout: this format has no special tokens to protect.
    if any(m.get("role") == "tool" for m in messages):
        head = next((i for i, m in enumerate(messages) if m.get("role") != "system"), 0)
        messages = [*messages[:head], *_TOOL_ROUND_DEMO, *messages[head:]]
    labels = {"system": "", "user": "User: ", "assistant": "Assistant: ", "tool": ""}
    lines = [labels.get(role, f"{role.capitalize()}: ") + text for role, text in _turns(messages)]
    return [("\n".join(lines) + "\nAssistant:", False)]


def _gemma(messages: Sequence[Message]) -> list[Part]:
    # Gemma has no system role: the system text opens the first user turn; nor a tool role:
    # a tool result is a user turn that says what it is.
    turns = _turns(messages)
    system = "\n\n".join(text for role, text in turns if role == "system")
    out: list[Part] = []
    for role, text in turns:
        if role == "system":
            continue
        if system and role == "user":
            text, system = f"{system}\n\n{text}", ""
        turn = "model" if role == "assistant" else "user"
        out += [(f"<start_of_turn>{turn}\n", True), (text, False), ("<end_of_turn>\n", True)]
    return [*out, ("<start_of_turn>model\n", True)]


def _chatml(messages: Sequence[Message]) -> list[Part]:
    out: list[Part] = []
    for role, text in _turns(messages):
        out += [(f"<|im_start|>{role}\n", True), (text, False), ("<|im_end|>\n", True)]
    return [*out, ("<|im_start|>assistant\n", True)]


FORMATS: dict[str, ChatFormat] = {
    "gemma-base": ChatFormat("gemma-base", _transcript,
                             ("\nUser:", "\nAssistant:", "\nTool result", "<end_of_turn>")),
    "gemma": ChatFormat("gemma", _gemma, ("<end_of_turn>",)),
    "chatml": ChatFormat("chatml", _chatml, ("<|im_end|>",)),
}


class Reply:
    """A chat reply's pieces as the client should see them.

    The prompt ends at the assistant's label (``Assistant:``), so the model's first token
    carries a space: leading whitespace is dropped. Text that could be the start of a turn
    marker or stop string is held back until it is known not to be one, so a reply cut at
    max_tokens does not end in half a marker (``" Hi\\nUser"``)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self._started = False

    def feed(self, piece: str) -> str:
        """The part of ``piece`` (after what was held) that can be shown now."""
        if not self._started:
            piece = piece.lstrip()
            if not piece:
                return ""
            self._started = True
        text = self._held + piece
        keep = self._partial_stop(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def end(self, finish_reason: str) -> str:
        """What was held, once generation ended: a cut-off marker is dropped."""
        held, self._held = self._held, ""
        return "" if finish_reason == "length" else held.rstrip()

    def whole(self, text: str, finish_reason: str) -> str:
        return (self.feed(text) + self.end(finish_reason)).rstrip()

    def _partial_stop(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
