"""``planner = "model"``: the chat model chooses the tool and its arguments by a native,
grammar-constrained tool call (the same path as ``/v1/chat/completions`` with ``tools``).

It only proposes. A call is used when it names an allowlisted tool and its arguments pass
the tool's schema and the kit's check; otherwise (or when the model answers in words, or
fails) the router decides as with ``planner = "router"``. Safety overrides run before
either. Sub-1B models plan badly, so ``router`` is the default (docs/agents.md).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from edged.agents.config import AgentSpec
from edged.agents.tools import JSON, Tool
from edged.errors import EdgedError
from edged.models import structured
from edged.models.contract import PRIORITY_HIGH, PRIORITY_NORMAL, GenerateParams, Inference

log = logging.getLogger(__name__)

PLAN_TOKENS = 128


class ModelPlanner:
    def __init__(self, models: Inference | None) -> None:
        self._models = models
        self._grammars: dict[tuple[str, ...], str] = {}

    async def propose(self, spec: AgentSpec, tools: dict[str, Tool], history: list[Any],
                      text: str) -> tuple[str, JSON] | None:
        """(tool, arguments) the model calls for ``text``, or None."""
        if self._models is None or not tools:
            return None
        listed = [structured.Tool(t.name, t.description, t.schema) for t in tools.values()]
        key = tuple(sorted(tools))
        if key not in self._grammars:
            self._grammars[key] = structured.tool_grammar(listed, allow_text=True)
        messages: list[dict[str, Any]] = [{"role": "system", "content": "\n".join(filter(None, (
            spec.instructions, structured.tool_prompt(listed, required=False))))}]
        for said, answered in history[-3:]:
            messages += [{"role": "user", "content": said},
                         {"role": "assistant", "content": answered}]
        messages.append({"role": "user", "content": text})
        params = GenerateParams(max_tokens=PLAN_TOKENS, temperature=0.0,
                                grammar=self._grammars[key],
                                priority=PRIORITY_HIGH if spec.phi else PRIORITY_NORMAL)
        try:
            gen = await self._models.chat(spec.model, messages, params)
        except EdgedError as e:
            log.warning("agent %s: the model could not plan: %s", spec.name, e.message)
            return None
        call = structured.parse_tool_call(gen.text, listed)
        if call is None:
            return None
        arguments = json.loads(call["function"]["arguments"])
        return str(call["function"]["name"]), arguments if isinstance(arguments, dict) else {}
