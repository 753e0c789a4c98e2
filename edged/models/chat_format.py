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
    """The text of a message: a string, a list of text parts, or the tool calls it made."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    text = str(content) if content is not None else ""
    calls = message.get("tool_calls")
    if calls and not text:
        text = json.dumps([c.get("function", c) for c in calls if isinstance(c, dict)])
    return text


def _transcript(messages: Sequence[Message]) -> list[Part]:
    # Plain text throughout: this format has no special tokens to protect.
    labels = {"system": "", "user": "User: ", "assistant": "Assistant: ", "tool": "Tool result: "}
    lines = []
    for m in messages:
        role = str(m.get("role", "user"))
        lines.append(labels.get(role, f"{role.capitalize()}: ") + message_text(m).strip())
    return [("\n".join(lines) + "\nAssistant:", False)]


def _gemma(messages: Sequence[Message]) -> list[Part]:
    # Gemma has no system role: the system text opens the first user turn.
    system = "\n\n".join(message_text(m) for m in messages if m.get("role") == "system")
    out: list[Part] = []
    for m in messages:
        role = m.get("role")
        if role == "system":
            continue
        text = message_text(m)
        if system and role == "user":
            text, system = f"{system}\n\n{text}", ""
        turn = "model" if role == "assistant" else "user"
        out += [(f"<start_of_turn>{turn}\n", True), (text, False), ("<end_of_turn>\n", True)]
    return [*out, ("<start_of_turn>model\n", True)]


def _chatml(messages: Sequence[Message]) -> list[Part]:
    out: list[Part] = []
    for m in messages:
        out += [(f"<|im_start|>{m.get('role', 'user')}\n", True), (message_text(m), False),
                ("<|im_end|>\n", True)]
    return [*out, ("<|im_start|>assistant\n", True)]


FORMATS: dict[str, ChatFormat] = {
    "gemma-base": ChatFormat("gemma-base", _transcript,
                             ("\nUser:", "\nAssistant:", "\nTool result:", "<end_of_turn>")),
    "gemma": ChatFormat("gemma", _gemma, ("<end_of_turn>",)),
    "chatml": ChatFormat("chatml", _chatml, ("<|im_end|>",)),
}
