"""The tool registry: schemas from signatures, argument validation, grammars."""

from __future__ import annotations

from typing import Annotated, Literal, TypedDict

import pytest

from edged.agents.grammar import gbnf
from edged.agents.tools import JSON, Limits, ToolContext, build_tool, collect, tool, validate
from edged.errors import BadRequest


class Line(TypedDict):
    product: str
    quantity: Annotated[int, Limits(minimum=1, maximum=9)]


class Shop:
    @tool
    async def order(self, ctx: ToolContext, items: list[Line],
                    speed: Literal["slow", "fast"] = "slow", note: str | None = None) -> JSON:
        """Order some things.

        Args:
            items: what to order
            speed: how fast

        Keywords: order, buy
        """
        return {"n": len(items)}

    async def helper(self) -> None:
        """Not a tool."""


def test_schema_from_signature_and_docstring() -> None:
    [t] = collect(Shop())
    assert t.name == "order" and t.description == "Order some things."
    assert t.keywords == ("order", "buy")
    props = t.schema["properties"]
    assert t.schema["required"] == ["items"]
    assert "ctx" not in props
    assert props["speed"] == {"type": "string", "enum": ["slow", "fast"],
                              "description": "how fast"}
    assert props["items"]["items"]["properties"]["quantity"] == {
        "type": "integer", "minimum": 1, "maximum": 9}
    assert props["note"] == {"type": "string"}


@pytest.mark.parametrize(("args", "field"), [
    ({}, "items"),
    ({"items": [{"product": "x", "quantity": 0}]}, "items[0].quantity"),
    ({"items": [{"product": "x", "quantity": 1}], "speed": "warp"}, "speed"),
    ({"items": [{"product": "x", "quantity": 1}], "admin": True}, "admin"),
    ({"items": "x"}, "items"),
])
def test_validation_names_the_field(args: JSON, field: str) -> None:
    t = build_tool(Shop().order)
    with pytest.raises(BadRequest) as e:
        validate(t.schema, args)
    assert f"arguments.{field}" in e.value.message


def test_validation_normalises_model_json() -> None:
    t = build_tool(Shop().order)
    clean = validate(t.schema, {"items": [{"product": " x ", "quantity": "2"}],
                                "speed": "FAST", "note": None})
    assert clean == {"items": [{"product": "x", "quantity": 2}], "speed": "fast"}


def test_grammar_is_llama_cpp_gbnf() -> None:
    from llama_cpp import LlamaGrammar

    t = build_tool(Shop().order)
    text = gbnf(t.schema)
    assert text.startswith("root ::= ")
    assert '\\"speed\\":' in text and '"null"' in text
    LlamaGrammar.from_string(text, verbose=False)  # raises on a malformed grammar
