"""A llama.cpp GBNF grammar from a tool's JSON schema, for constrained slot filling.

Deliberately tight: keys in schema order, no free whitespace, bounded strings and numbers,
so a small model cannot wander off into a long or malformed answer. Optional arguments may
be ``null``.
"""

from __future__ import annotations

import json
from typing import Any

from edged.agents.tools import JSON

_BASE = r'''
str ::= "\"" [^"\\\n<>{}]{0,48} "\""
int ::= "-"? [0-9]{1,6}
num ::= "-"? [0-9]{1,7} ("." [0-9]{1,2})?
bool ::= "true" | "false"
'''


class _Builder:
    def __init__(self) -> None:
        self.rules: list[str] = []
        self._n = 0

    def rule(self, body: str) -> str:
        self._n += 1
        name = f"r{self._n}"
        self.rules.append(f"{name} ::= {body}")
        return name

    def value(self, schema: JSON, optional: bool) -> str:
        name = self._value(schema)
        return self.rule(f'{name} | "null"') if optional else name

    def _value(self, schema: JSON) -> str:
        kind = schema.get("type")
        if "enum" in schema:
            return self.rule(" | ".join(_literal(json.dumps(e)) for e in schema["enum"]))
        if kind == "object":
            return self.object(schema)
        if kind == "array":
            item = self._value(schema["items"])
            most = max(0, int(schema.get("maxItems", 5)) - 1)
            return self.rule(f'"[" ({item} ("," {item}){{0,{most}}})? "]"')
        simple = {"string": "str", "integer": "int", "number": "num", "boolean": "bool"}
        return simple[str(kind)]

    def object(self, schema: JSON) -> str:
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        parts = []
        for i, (key, sub) in enumerate(props.items()):
            sep = "," if i else ""
            parts.append(f'{_literal(sep + json.dumps(key) + ":")} '
                         f'{self.value(sub, key not in required)}')
        body = " ".join(['"{"', *parts, '"}"'])
        return self.rule(body)


def _literal(text: str) -> str:
    return json.dumps(text)


def gbnf(schema: JSON) -> str:
    """The grammar of one JSON object matching ``schema``."""
    b = _Builder()
    top = b.object(schema)
    return "\n".join([f"root ::= {top}", *b.rules]) + _BASE
