"""What runs on a worker thread, on the bundled model: generation stops when its caller or
sink says so and is measured, embeddings go in chunks and stop between them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edged.errors import BadRequest
from edged.models.contract import GenerateParams
from edged.models.jobs import (
    EMBED_CHUNK,
    classify_job,
    embed_chunks,
    embed_counted_job,
    embed_job,
    generate_job,
)
from edged.models.llama_backend import LlamaBackend, LoadedLlama
from edged.models.metrics import ModelMetrics
from tests.models.local import bundled_spec

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"


@pytest.fixture(scope="module")
def model(bundled_model_path: Path) -> Iterator[LoadedLlama]:
    spec = bundled_spec(bundled_model_path, embedding=True)
    loaded = LlamaBackend().load(spec, bundled_model_path, 1)
    yield loaded
    loaded.close()


def sample(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name, {"model": "g"}) or 0.0


def test_generation_is_measured_and_stops_when_its_sink_says_so(model: LoadedLlama) -> None:
    registry = CollectorRegistry()
    metrics = ModelMetrics(registry)
    params = GenerateParams(max_tokens=48, temperature=0)
    got: list[str] = []

    def sink(piece: str) -> bool:
        got.append(piece)
        return len(got) < 3

    gen = generate_job(metrics, "g", COUNTING, params, sink, threading.Event())(model)
    assert gen.finish_reason == "cancelled" and len(got) == 3
    assert gen.completion_tokens < 48
    assert sample(registry, "edged_model_tokens_total") == gen.completion_tokens
    assert sample(registry, "edged_model_ttft_seconds_count") == 1
    whole = generate_job(metrics, "g", COUNTING, GenerateParams(max_tokens=6, temperature=0),
                         None, threading.Event())(model)
    assert whole.finish_reason == "length" and whole.completion_tokens == 6
    assert sample(registry, "edged_model_decode_tokens_per_second_count") >= 1


def test_a_cancelled_request_stops_at_its_next_token(model: LoadedLlama) -> None:
    cancel = threading.Event()
    cancel.set()
    gen = generate_job(ModelMetrics(CollectorRegistry()), "g", COUNTING,
                       GenerateParams(max_tokens=48, temperature=0), None, cancel)(model)
    assert gen.finish_reason == "cancelled" and gen.completion_tokens <= 1


def test_embeddings_come_in_chunks_with_their_token_count(model: LoadedLlama) -> None:
    texts = [f"text number {i}" for i in range(EMBED_CHUNK + 1)]  # two chunks
    vectors, tokens = embed_counted_job(texts, threading.Event())(model)
    assert len(vectors) == len(texts) and tokens == model.count_tokens(texts)
    # The first chunk alone is the same batch, so the same vectors.
    assert embed_job(texts[:EMBED_CHUNK], threading.Event())(model) == vectors[:EMBED_CHUNK]


def test_embedding_stops_between_chunks_once_cancelled(model: LoadedLlama) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(asyncio.CancelledError):
        embed_chunks(model, ["a"] * (EMBED_CHUNK * 2), cancel)


def test_a_generative_model_refuses_to_classify(model: LoadedLlama) -> None:
    with pytest.raises(BadRequest) as e:
        classify_job(["x"])(model)
    assert e.value.code == "not_a_classifier"
