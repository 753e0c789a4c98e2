"""The tool registry: typed Python functions whose JSON schema comes from their signature.

A tool is an async method marked with ``@tool``. Its first parameter after ``self`` is the
``ToolContext`` the runtime fills (who asks, the session, an auth token); it never appears in
the schema, so no model output can set it. The remaining parameters become the schema:
``str``, ``int``, ``float``, ``bool``, ``Literal[...]`` (an enum), ``X | None`` (optional),
``list[X]``, a ``TypedDict`` (an object), and ``Annotated[X, Limits(...)]`` for bounds. The
docstring's first paragraph is the description; an ``Args:`` section describes parameters;
a ``Keywords:`` line gives routing hints.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

from edged.errors import BadRequest

JSON = dict[str, Any]
MAX_STRING = 200


@dataclass(frozen=True)
class Limits:
    """Bounds for ``Annotated`` parameters."""

    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    max_items: int | None = None


@dataclass(frozen=True)
class ToolContext:
    """What the runtime, not the model, decides: the caller, the session and credentials."""

    agent: str
    uid: int
    session_id: str
    token: str | None = None
    phi: bool = False


ToolFn = Callable[..., Awaitable[JSON]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    schema: JSON  # JSON schema of the arguments (an object)
    keywords: tuple[str, ...]
    fn: ToolFn = field(repr=False)

    def spec(self) -> JSON:
        """The OpenAI-style function description."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.schema}}


_TOOL_MARK = "__edged_tool__"


def tool(fn: Callable[..., Awaitable[JSON]]) -> Callable[..., Awaitable[JSON]]:
    """Mark a method as a tool; the registry builds its schema when it collects it."""
    setattr(fn, _TOOL_MARK, True)
    return fn


def _docstring(fn: Callable[..., Any]) -> tuple[str, dict[str, str], tuple[str, ...]]:
    doc = inspect.getdoc(fn) or ""
    description = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    params: dict[str, str] = {}
    for m in re.finditer(r"^\s+(\w+): (.+)$", doc.split("Args:", 1)[-1] if "Args:" in doc else "",
                         re.MULTILINE):
        params[m.group(1)] = m.group(2).strip()
    kw = re.search(r"^Keywords: (.+)$", doc, re.MULTILINE)
    keywords = tuple(k.strip() for k in kw.group(1).split(",")) if kw else ()
    return description, params, keywords


def type_schema(hint: Any) -> tuple[JSON, bool]:
    """(schema, optional) of one annotation."""
    origin = get_origin(hint)
    if origin is typing.Annotated:
        base, *extra = get_args(hint)
        schema, optional = type_schema(base)
        for limit in extra:
            if isinstance(limit, Limits):
                schema = {**schema, **_limit_keys(limit)}
        return schema, optional
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(hint) if a is not type(None)]
        schema, _ = type_schema(members[0])
        return schema, len(members) < len(get_args(hint))
    if origin is Literal:
        return {"type": "string", "enum": [str(a) for a in get_args(hint)]}, False
    if origin is list:
        item, _ = type_schema(get_args(hint)[0])
        return {"type": "array", "items": item}, False
    if is_typeddict(hint):
        return object_schema(get_type_hints(hint, include_extras=True), {}), False
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if hint in simple:
        return {"type": simple[hint]}, False
    raise TypeError(f"tool parameter type {hint!r} has no JSON schema")


def _limit_keys(limit: Limits) -> JSON:
    names = {"minimum": limit.minimum, "maximum": limit.maximum,
             "maxLength": limit.max_length, "maxItems": limit.max_items}
    return {k: v for k, v in names.items() if v is not None}


def object_schema(hints: dict[str, Any], docs: dict[str, str],
                  defaults: dict[str, Any] | None = None) -> JSON:
    props: JSON = {}
    required: list[str] = []
    for name, hint in hints.items():
        schema, optional = type_schema(hint)
        if name in docs:
            schema = {**schema, "description": docs[name]}
        props[name] = schema
        if not optional and name not in (defaults or {}):
            required.append(name)
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}


def build_tool(fn: ToolFn) -> Tool:
    """A ``Tool`` from a bound method: the first parameter (the context) is left out."""
    description, docs, keywords = _docstring(fn)
    hints = get_type_hints(fn, include_extras=True)
    params = list(inspect.signature(fn).parameters.values())[1:]
    arg_hints = {p.name: hints[p.name] for p in params}
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    schema = object_schema(arg_hints, docs, defaults)
    return Tool(name=fn.__name__, description=description, schema=schema, keywords=keywords,
                fn=fn)


def collect(obj: object) -> list[Tool]:
    """Every ``@tool`` method of an object, bound to it."""
    found = []
    for name in dir(type(obj)):
        member = getattr(type(obj), name)
        if callable(member) and getattr(member, _TOOL_MARK, False):
            found.append(build_tool(getattr(obj, name)))
    return found


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool) -> None:
        if t.name in self._tools:
            raise ValueError(f"tool {t.name!r} is registered twice")
        self._tools[t.name] = t

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)


def validate(schema: JSON, value: Any, where: str = "arguments") -> Any:
    """Check ``value`` against the schema subset tools use; return it with types normalised.

    Raises ``BadRequest`` naming the field. Small coercions a model's JSON needs ("2" for 2,
    2.0 for 2) are accepted; anything else is an error, never silently dropped.
    """
    kind = schema.get("type")
    checker = _CHECKERS.get(str(kind))
    if checker is None:
        raise BadRequest(f"{where}: unsupported schema type {kind!r}")
    return checker(schema, value, where)


def _check_object(schema: JSON, value: Any, where: str) -> JSON:
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected an object")
    props: JSON = schema.get("properties", {})
    unknown = sorted(set(value) - set(props))
    if unknown:
        raise BadRequest(f"{where}.{unknown[0]}: unknown argument")
    out: JSON = {}
    for name, sub in props.items():
        if value.get(name) is None:
            if name in schema.get("required", ()):
                raise BadRequest(f"{where}.{name}: required argument is missing")
            continue
        out[name] = validate(sub, value[name], f"{where}.{name}")
    return out


def _check_string(schema: JSON, value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: expected a string")
    text = value.strip()
    if len(text) > schema.get("maxLength", MAX_STRING):
        raise BadRequest(f"{where}: longer than {schema.get('maxLength', MAX_STRING)} characters")
    if "enum" in schema:
        match = [e for e in schema["enum"] if e.lower() == text.lower()]
        if not match:
            raise BadRequest(f"{where}: {text!r} is not one of {', '.join(schema['enum'])}")
        text = match[0]
    return text


def _check_number(schema: JSON, value: Any, where: str) -> float | int:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadRequest(f"{where}: {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{where}: expected a number")
    if schema["type"] == "integer":
        if value != int(value):
            raise BadRequest(f"{where}: expected a whole number")
        value = int(value)
    if "minimum" in schema and value < schema["minimum"]:
        raise BadRequest(f"{where}: {value} is below the minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        raise BadRequest(f"{where}: {value} is above the maximum {schema['maximum']}")
    number: float | int = value
    return number


def _check_bool(schema: JSON, value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: expected true or false")
    return value


def _check_array(schema: JSON, value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"{where}: expected a list")
    if len(value) > schema.get("maxItems", 20):
        raise BadRequest(f"{where}: more than {schema.get('maxItems', 20)} items")
    return [validate(schema["items"], v, f"{where}[{i}]") for i, v in enumerate(value)]


_CHECKERS: dict[str, Callable[[JSON, Any, str], Any]] = {
    "object": _check_object, "string": _check_string, "integer": _check_number,
    "number": _check_number, "boolean": _check_bool, "array": _check_array,
}
