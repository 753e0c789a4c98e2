"""What runs on a model's worker thread for each kind of request: generate (timing its
first token and decode speed), embed (in chunks, so a request whose caller left stops at
the next one), classify. Each builder takes the request's cancel flag and returns the
blocking function the worker calls with the loaded model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from edged.models.backend import LoadedModel, TokenSink
from edged.models.contract import GenerateParams, Generation
from edged.models.metrics import ModelMetrics

Prompt = str | Sequence[dict[str, Any]]
EMBED_CHUNK = 8  # texts per batch: a request whose caller left stops at the next one


def generate_job(metrics: ModelMetrics, alias: str, prompt: Prompt, params: GenerateParams,
                 sink: TokenSink | None, cancel: threading.Event
                 ) -> Callable[[LoadedModel], Generation]:
    """A string prompt is raw completion; a list of messages gets the chat format. Pieces
    go to ``sink`` (a stream) until it or ``cancel`` says stop."""
    def job(model: LoadedModel) -> Generation:
        started = time.perf_counter()
        first: list[float] = []

        def on_token(piece: str) -> bool:
            if not first:
                first.append(time.perf_counter())
            if cancel.is_set():
                return False
            return sink(piece) if sink is not None else True

        gen = model.generate(prompt, params, on_token)
        if first:
            metrics.ttft.labels(alias).observe(first[0] - started)
            decode = time.perf_counter() - first[0]
            if gen.completion_tokens > 1 and decode > 0:
                metrics.tokens_per_second.labels(alias).observe(
                    (gen.completion_tokens - 1) / decode)
        metrics.tokens.labels(alias).inc(gen.completion_tokens)
        return gen
    return job


def embed_job(items: list[str], cancel: threading.Event
              ) -> Callable[[LoadedModel], list[list[float]]]:
    return lambda model: embed_chunks(model, items, cancel)


def embed_counted_job(items: list[str], cancel: threading.Event
                      ) -> Callable[[LoadedModel], tuple[list[list[float]], int]]:
    """Vectors and the number of input tokens they took (0 if the model cannot say)."""
    def run(model: LoadedModel) -> tuple[list[list[float]], int]:
        count = getattr(model, "count_tokens", None)
        vectors = embed_chunks(model, items, cancel)
        return vectors, int(count(items)) if count is not None else 0
    return run


def classify_job(items: list[str]
                 ) -> Callable[[LoadedModel], tuple[list[list[float]], tuple[str, ...]]]:
    """Class scores per text, and the class names when the model has them."""
    def run(model: LoadedModel) -> tuple[list[list[float]], tuple[str, ...]]:
        return model.classify(items), tuple(getattr(model, "labels", ()) or ())
    return run


def embed_chunks(model: LoadedModel, items: list[str], cancel: threading.Event
                 ) -> list[list[float]]:
    vectors: list[list[float]] = []
    for start in range(0, len(items), EMBED_CHUNK):
        if cancel.is_set():
            raise asyncio.CancelledError()
        vectors += model.embed(items[start:start + EMBED_CHUNK])
    return vectors
