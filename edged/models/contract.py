"""What agents and the API need from the model manager.

The manager (``edged/models/manager.py``) implements this; agents depend only on this
protocol so they work with whatever model the config names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Priorities: lower runs first. Clinic requests outrank kiosk ones.
PRIORITY_HIGH = 0
PRIORITY_NORMAL = 5
PRIORITY_LOW = 9


@dataclass(frozen=True)
class GenerateParams:
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # a GBNF grammar (llama.cpp) constraining the output
    seed: int | None = None
    # Repetition, as OpenAI and llama.cpp take it: each past token's logit is divided by
    # repeat_penalty, less count x frequency_penalty, less presence_penalty once seen.
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # May share the KV cells of a cached prefix. Off: the whole prompt is decoded, so a
    # seeded request gives the same text whatever ran before it (see docs/models.md).
    cache_prompt: bool = True
    priority: int = PRIORITY_NORMAL
    deadline: float | None = None  # loop.time() by which the request must have started
    # Never to a remote alias (an agent with phi = true); refused where it would leave.
    local_only: bool = False
    origin: str | None = None  # who asked, for the audit record of a remote call ("agent:x")


@dataclass
class Generation:
    text: str
    finish_reason: str  # stop | length | cancelled
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV came from a shared prefix
    extra: dict[str, Any] = field(default_factory=dict)


class Inference(Protocol):
    def aliases(self) -> Sequence[str]: ...

    async def chat(self, alias: str, messages: Sequence[dict[str, Any]],
                   params: GenerateParams) -> Generation:
        """Apply the model's chat format to ``messages`` and generate."""
        ...

    def stream_chat(self, alias: str, messages: Sequence[dict[str, Any]],
                    params: GenerateParams) -> AsyncIterator[str]:
        """Yield text pieces as they are generated; closing the iterator stops generation."""
        ...

    async def complete(self, alias: str, prompt: str, params: GenerateParams) -> Generation:
        """Raw completion of ``prompt`` (no chat format)."""
        ...

    async def embed(self, alias: str, texts: Sequence[str]) -> list[list[float]]:
        """One normalised embedding per text."""
        ...
