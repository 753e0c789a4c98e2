"""Arguments proposed by the model, as JSON constrained by a grammar from the tool's schema.

Used only when deterministic extraction falls short, and its output is validated and checked
against the catalog or schedule like anything else: the model may fill a slot, never choose
a tool.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from edged.agents.config import AgentSpec
from edged.agents.grammar import gbnf
from edged.agents.slots import NUMBER_WORDS, normalize, words
from edged.agents.tools import JSON, Tool
from edged.errors import EdgedError
from edged.models.contract import PRIORITY_HIGH, PRIORITY_NORMAL, GenerateParams, Inference

log = logging.getLogger(__name__)


class SlotFiller:
    def __init__(self, models: Inference | None) -> None:
        self._models = models
        self._grammars: dict[str, str] = {}

    def _grammar(self, tool: Tool) -> str:
        if tool.name not in self._grammars:
            self._grammars[tool.name] = gbnf(tool.schema)
        return self._grammars[tool.name]

    async def propose(self, spec: AgentSpec, tool: Tool, text: str) -> JSON | None:
        if self._models is None:
            return None
        params = GenerateParams(max_tokens=96, temperature=0.0, grammar=self._grammar(tool),
                                priority=PRIORITY_HIGH if spec.phi else PRIORITY_NORMAL)
        try:
            gen = await self._models.complete(spec.model, _prompt(tool, text), params)
            data = json.loads(gen.text)
        except EdgedError as e:
            log.warning("agent %s: slot filling by the model failed: %s", spec.name, e.message)
            return None
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        return {k: v for k, v in data.items()
                if v not in (None, "", []) and grounded(k, v, text)}


def grounded(key: str, value: Any, text: str) -> bool:
    """Is the proposed value in the request? A small model fills gaps with plausible
    inventions (a date, a name, a URL), and an invented slot must never book anything."""
    if key in ("date", "time"):
        return False  # only what slots.parse_date/parse_time read from the text
    if isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return str(int(value)) in text or any(
            w in NUMBER_WORDS for w in words(text))
    if isinstance(value, str):
        toks = normalize(value).split()
        said = set(normalize(text).split())
        return bool(toks) and sum(t in said for t in toks) / len(toks) >= 0.6
    if isinstance(value, list):
        return all(isinstance(v, dict) and all(grounded(k, x, text) for k, x in v.items())
                   for v in value)
    return False


def _prompt(tool: Tool, text: str) -> str:
    params = "\n".join(f"- {name}: {p.get('description', p.get('type'))}"
                       for name, p in tool.schema["properties"].items())
    return (f"Today is {dt.date.today().isoformat()}. Extract the arguments of "
            f"{tool.name} ({tool.description}) from the request. Use null when the request "
            f"does not say.\nArguments:\n{params}\nRequest: {text}\nJSON: ")
