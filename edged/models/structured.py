"""Structured output: tool calls and ``response_format`` as llama.cpp grammars.

A sub-1B model cannot be trusted to emit well-formed JSON, let alone JSON that fits a
schema, so the output is constrained token by token: the request's JSON schema becomes a
GBNF grammar (llama.cpp's own converter) and the sampler can only produce text the grammar
accepts. A tool call is ``{"name": <one of the tools>, "arguments": <that tool's schema>}``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from edged.errors import BadRequest

_LOOSE_CHAR = 'char ::= [^"\\\\]'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F]'
# Free text that does not open a JSON object: what "auto" allows besides a tool call.
_TEXT_RULE = 'text ::= [^{] [^\\x00]*'


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


def schema_grammar(schema: dict[str, Any], field: str) -> str:
    """GBNF for ``schema``; an unsupported schema is a 400 naming ``field``."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf
    try:
        gbnf = str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as e:  # the converter raises bare Exception/KeyError/... on odd schemas
        raise BadRequest(f"{field}: cannot turn this JSON schema into a grammar: {e}",
                         code="unsupported_schema") from None
    # This converter lets raw newlines and control characters into strings, which JSON
    # forbids (and a base model happily writes "\nUser: ..." into a string value).
    return _ends_at_root(gbnf.replace(_LOOSE_CHAR, _STRICT_CHAR))


def _ends_at_root(gbnf: str) -> str:
    """Drop the whitespace a root rule allows after its closing brace: once the value is
    complete the only token left is the end, so generation stops there instead of padding
    with spaces up to max_tokens."""
    lines = gbnf.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("root ::=") and line.endswith(" space"):
            lines[i] = line.removesuffix(" space")
    return "\n".join(lines) + "\n"


def json_object_grammar() -> str:
    """llama.cpp's JSON grammar, rooted at an object without trailing whitespace."""
    from llama_cpp.llama_grammar import JSON_GBNF
    root = 'root ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}"'
    return str(JSON_GBNF).replace("root   ::= object", root, 1)


def call_schema(tools: list[Tool]) -> dict[str, Any]:
    variants = [{
        "type": "object",
        "properties": {"name": {"const": t.name}, "arguments": t.parameters},
        "required": ["name", "arguments"],
    } for t in tools]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def tool_grammar(tools: list[Tool], allow_text: bool) -> str:
    gbnf = schema_grammar(call_schema(tools), "tools")
    if not allow_text:
        return gbnf
    # The converter names its start rule "root"; make it one branch of a new root.
    renamed = gbnf.replace("root ::=", "call ::=", 1)
    return f"root ::= call | text\n{_TEXT_RULE}\n{renamed}"


def tool_prompt(tools: list[Tool], required: bool) -> str:
    """A system message telling the model what it may call and how."""
    lines = ["You can call these tools:"]
    for t in tools:
        params = ", ".join(t.parameters.get("properties", {}))
        lines.append(f"- {t.name}({params}): {t.description}".rstrip(": "))
    how = 'To call a tool, reply only with JSON: {"name": "<tool>", "arguments": {...}}.'
    lines.append(how if required else how + " Otherwise reply in plain text.")
    return "\n".join(lines)


def parse_tool_call(text: str, tools: list[Tool]) -> dict[str, Any] | None:
    """The OpenAI ``tool_calls`` item for ``text``, or None when it is not a call (plain
    text under "auto", or JSON cut off by max_tokens)."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        call = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    names = {t.name for t in tools}
    if not isinstance(call, dict) or call.get("name") not in names:
        return None
    return {
        "id": f"call_{secrets.token_hex(12)}",
        "type": "function",
        "function": {"name": call["name"],
                     "arguments": json.dumps(call.get("arguments", {}))},
    }
