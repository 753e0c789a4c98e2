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
# Free text that does not open a JSON object: what "auto" allows besides a tool call. It may
# not start with whitespace either: " {" would be a call written as text.
_TEXT_RULE = 'text ::= [^{ \\t\\n\\r] [^\\x00]*'
# What a string with no maxLength of its own may run to: without a bound, a small model can
# repeat one character until max_tokens cuts the call off (docs/models.md).
STRING_BOUND = 128
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


def schema_grammar(schema: dict[str, Any], field: str) -> str:
    """GBNF for ``schema``; an unsupported schema is a 400 naming ``field``."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf
    try:
        gbnf = str(json_schema_to_gbnf(json.dumps(bounded(schema))))
    except Exception as e:  # the converter raises bare Exception/KeyError/... on odd schemas
        raise BadRequest(f"{field}: cannot turn this JSON schema into a grammar: {e}",
                         code="unsupported_schema") from None
    # This converter lets raw newlines and control characters into strings, which JSON
    # forbids (and a base model happily writes "\nUser: ..." into a string value).
    return _ends_at_root(gbnf.replace(_LOOSE_CHAR, _STRICT_CHAR))


def bounded(schema: Any) -> Any:
    """``schema`` with ``maxLength`` = STRING_BOUND on every free string that has none."""
    if isinstance(schema, list):
        return [bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v) if k in ("items", "additionalProperties", "not", *_SCHEMA_LISTS)
           else v for k, v in schema.items()}
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            out[key] = {name: bounded(s) for name, s in schema[key].items()}
    kind = schema.get("type")
    free = not any(k in schema for k in ("enum", "const", "pattern", "format", "maxLength"))
    if free and (kind == "string" or (isinstance(kind, list) and "string" in kind)):
        out["maxLength"] = STRING_BOUND
    return out


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


def answer_grammar() -> str:
    """Prose, the answer once the tool results are in (see ``tool_rounds``): it opens with
    neither whitespace, a quote nor a bracket and holds no braces, so a small model cannot
    echo its call or the result's JSON back as the answer."""
    return 'root ::= [^{}\\[\\]"\' \\t\\n\\r\\x00] [^{}\\x00]*\n'


def tool_grammar(tools: list[Tool], allow_text: bool) -> str:
    gbnf = schema_grammar(call_schema(tools), "tools")
    if not allow_text:
        return gbnf
    # The converter names its start rule "root"; make it one branch of a new root.
    renamed = gbnf.replace("root ::=", "call ::=", 1)
    return f"root ::= call | text\n{_TEXT_RULE}\n{renamed}"


def tool_prompt(tools: list[Tool], required: bool, answer: bool = False) -> str:
    """A system message telling the model what it may call and how; with ``answer``, that
    the results are in and it answers in text."""
    lines = ["You can call these tools:"]
    for t in tools:
        params = ", ".join(t.parameters.get("properties", {}))
        lines.append(f"- {t.name}({params}): {t.description}".rstrip(": "))
    how = 'To call a tool, reply only with JSON: {"name": "<tool>", "arguments": {...}}.'
    if answer:
        how = "The tool results are in: answer the user in plain text from them."
    elif not required:
        how += " Otherwise reply in plain text. After a tool result, answer in plain text."
    lines.append(how)
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
