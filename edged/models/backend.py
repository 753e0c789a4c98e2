"""The seam between the model manager and an inference library (llama.cpp, onnxruntime).

A ``Backend`` estimates and loads; a ``LoadedModel`` serves requests. Every method of a
``LoadedModel`` is blocking and is called only from that model's own worker thread
(llama.cpp contexts are not thread-safe), never from the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from edged.models.config import ModelSpec
from edged.models.contract import GenerateParams, Generation

# Called with each generated text piece; return False to stop generating (client gone).
TokenSink = Callable[[str], bool]


class LoadedModel(Protocol):
    def generate(self, prompt: str | Sequence[dict[str, Any]], params: GenerateParams,
                 on_token: TokenSink | None) -> Generation:
        """A string prompt is raw completion; a list of messages gets the chat format."""
        ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    def classify(self, texts: Sequence[str]) -> list[list[float]]:
        """Class scores per text (classifier graphs)."""
        ...

    def close(self) -> None:
        """Free everything; the manager then returns freed heap to the OS (malloc_trim)."""
        ...


class Backend(Protocol):
    format: str  # gguf | onnx

    def estimate(self, spec: ModelSpec, path: Path, threads: int) -> int:
        """Bytes this model will add once loaded, from the file's own metadata."""
        ...

    def load(self, spec: ModelSpec, path: Path, threads: int) -> LoadedModel:
        """Load (blocking; runs on the model's worker thread). Raises ``IntegrityError`` for a
        corrupt or truncated file."""
        ...
