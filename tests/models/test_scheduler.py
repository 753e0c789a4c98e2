"""Continuous batching on the bundled model: many sequences in one llama.cpp context."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edged.errors import Unavailable
from edged.models.config import ModelSpec
from edged.models.contract import GenerateParams, Generation
from edged.models.llama_backend import LlamaBackend, LoadedLlama
from edged.models.scheduler import SequenceScheduler

PROMPTS = [f"Story number {i}: once upon a time, in a land of" for i in range(8)]


def spec(path: Path, parallel: int, context: int = 512) -> ModelSpec:
    return ModelSpec(alias="g", format="gguf", path=path, package=None, sha256=None,
                     context=context, threads=1, chat_format="gemma-base", variants=(),
                     embedding=False, kind="chat", parallel=parallel)


@pytest.fixture(scope="module")
def model(bundled_model_path: Path) -> Iterator[LoadedLlama]:
    loaded = LlamaBackend().load(spec(bundled_model_path, 8), bundled_model_path, 1)
    yield loaded
    loaded.close()


class Peak:
    """The most sequences seen running at once, sampled at every token."""

    def __init__(self, model: LoadedLlama) -> None:
        self._model = model
        self.most = 0

    def sink(self, out: list[str], stop_after: int | None = None) -> Callable[[str], bool]:
        def on_token(piece: str) -> bool:
            self.most = max(self.most, self._model.running())
            out.append(piece)
            return stop_after is None or len(out) < stop_after
        return on_token


def together(model: LoadedLlama, jobs: list[tuple[str, GenerateParams, Any]]
             ) -> list[Generation]:
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(model.generate, p, params, sink) for p, params, sink in jobs]
        return [f.result() for f in futures]


def test_a_seeded_request_is_the_same_whatever_ran_before_streamed_or_not(
        model: LoadedLlama) -> None:
    params = GenerateParams(max_tokens=24, temperature=0.8, seed=7)
    first = model.generate(PROMPTS[0], params, None)
    model.generate(PROMPTS[1], GenerateParams(max_tokens=16, seed=3), None)
    streamed: list[str] = []
    again = model.generate(PROMPTS[0], params, lambda piece: streamed.append(piece) is None)
    assert again.text == first.text == "".join(streamed)
    assert again.completion_tokens == first.completion_tokens > 0
    greedy = GenerateParams(max_tokens=24, temperature=0)
    assert model.generate(PROMPTS[2], greedy, None).text == \
        model.generate(PROMPTS[2], greedy, None).text


def test_eight_streams_run_in_one_batch(model: LoadedLlama) -> None:
    peak = Peak(model)
    outs: list[list[str]] = [[] for _ in PROMPTS]
    gens = together(model, [(p, GenerateParams(max_tokens=24, seed=i), peak.sink(outs[i]))
                            for i, p in enumerate(PROMPTS)])
    assert peak.most >= 4  # they ran side by side, not in turn
    for gen, out in zip(gens, outs, strict=True):
        assert gen.text == "".join(out) and gen.completion_tokens > 0
        assert gen.finish_reason in ("stop", "length")
    assert model.running() == 0


def test_grammar_and_free_sequences_share_a_batch(model: LoadedLlama) -> None:
    peak = Peak(model)
    # A grammar that must end: the sequence stops where it says, whatever the model wants.
    grammar = GenerateParams(max_tokens=40, temperature=0.7, seed=1, grammar=(
        'root ::= "{\\"cat\\": " ("true" | "false") ", \\"age\\": " [0-9] "}"'))
    free = GenerateParams(max_tokens=24, temperature=0)
    outs: list[list[str]] = [[] for _ in range(4)]
    chat = [{"role": "user", "content": "Give me a JSON object about a cat"}]
    gens = together(model, [(chat, grammar, peak.sink(outs[0])),
                            (PROMPTS[3], free, peak.sink(outs[1])),
                            (chat, grammar, peak.sink(outs[2])),
                            (PROMPTS[4], free, peak.sink(outs[3]))])
    assert peak.most >= 2
    for gen in (gens[0], gens[2]):
        assert gen.finish_reason == "stop" and set(json.loads(gen.text)) == {"cat", "age"}
    for gen in (gens[1], gens[3]):
        assert not gen.text.lstrip().startswith("{") and gen.completion_tokens > 0


def test_a_cancel_mid_batch_leaves_the_others_untouched(model: LoadedLlama) -> None:
    peak = Peak(model)
    counting = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # a base model keeps counting
    params = GenerateParams(max_tokens=30, temperature=0)
    outs: list[list[str]] = [[] for _ in range(3)]
    gens = together(model, [(counting, params, peak.sink(outs[0])),
                            (counting, params, peak.sink(outs[1], stop_after=3)),
                            (counting, params, peak.sink(outs[2]))])
    assert gens[1].finish_reason == "cancelled" and len(outs[1]) == 3
    for gen in (gens[0], gens[2]):
        assert gen.finish_reason == "length" and gen.completion_tokens == 30
    assert peak.most >= 2 and model.running() == 0


def test_an_invalid_grammar_is_a_400_and_the_batch_goes_on(model: LoadedLlama) -> None:
    from edged.errors import BadRequest
    with pytest.raises(BadRequest, match="not a valid GBNF grammar"):
        model.generate("Hi", GenerateParams(max_tokens=2, grammar="root ::= nothing"), None)
    assert model.generate("Hi", GenerateParams(max_tokens=2), None).completion_tokens > 0


def test_a_full_kv_cache_makes_the_youngest_wait_or_end_clearly(
        bundled_model_path: Path) -> None:
    """Four sequences of up to 400 tokens in a KV cache of 512 cells: they cannot all fit.
    Each ends normally, or ends at "length" (its context was the cache), or fails with a
    clear kv_cache_full error; nothing crashes and the scheduler serves on."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel
    LlamaBackend().warm_up()
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = False
    llm: Any = LlamaModel(path_model=str(bundled_model_path), params=params, verbose=False)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 512, 512, 512, 4
    cp.n_outputs_max, cp.kv_unified, cp.swa_full, cp.n_threads = 4, True, False, 1
    cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = llama_cpp.llama_init_from_model(llm.model, cp)
    scheduler = SequenceScheduler("small", llm, ctx, parallel=4, context=512, n_batch=512,
                                  steps=threading.Lock())
    try:
        prompt = llm.tokenize(("word " * 150).encode(), True, False)
        params_ = GenerateParams(max_tokens=200, temperature=0)

        def run(_i: int) -> Generation | Unavailable:
            try:
                return scheduler.generate(prompt, params_, None)
            except Unavailable as e:
                return e
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(run, range(4)))
        ended = [r for r in results if isinstance(r, Generation)]
        failed = [r for r in results if isinstance(r, Unavailable)]
        assert ended and all(r.finish_reason in ("stop", "length") for r in ended)
        assert all(e.code == "kv_cache_full" for e in failed)
        assert any(r.completion_tokens == 200 or r.finish_reason == "stop" for r in ended)
        assert scheduler.running() == 0
        assert scheduler.generate(prompt[:10], GenerateParams(max_tokens=3), None).text
    finally:
        scheduler.close()
        llama_cpp.llama_free(ctx)
        llm.close()
