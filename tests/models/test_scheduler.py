"""Continuous batching on the bundled model: many sequences in one llama.cpp context."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
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
        uncached: LoadedLlama) -> None:
    """Without a prefix cache, one request at a time: every prompt is decoded whole into
    the same cells, so a seeded (or greedy) request answers the same, streamed or not."""
    model = uncached
    for prompt in (PROMPTS[0], INSTRUCTIONS + "Where is the glue?"):
        params = GenerateParams(max_tokens=24, temperature=0.8, seed=7)
        first = model.generate(prompt, params, None)
        model.generate(PROMPTS[1], GenerateParams(max_tokens=16, seed=3), None)
        streamed: list[str] = []
        again = model.generate(prompt, params, lambda piece, out=streamed: out.append(piece)
                               is None)
        assert again.text == first.text == "".join(streamed)
        assert again.completion_tokens == first.completion_tokens > 0
        greedy = GenerateParams(max_tokens=24, temperature=0)
        assert model.generate(prompt, greedy, None).text == \
            model.generate(prompt, greedy, None).text


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


@contextmanager
def small_scheduler(path: Path, *, cache_slots: int = 0) -> Iterator[tuple[SequenceScheduler, Any]]:
    """A scheduler of 4 sequences over a KV cache of only 512 cells."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel
    LlamaBackend().warm_up()
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = True  # as LlamaBackend loads it
    llm: Any = LlamaModel(path_model=str(path), params=params, verbose=False)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 512, 512, 512, 4 + cache_slots
    cp.n_outputs_max, cp.kv_unified, cp.swa_full, cp.n_threads = cp.n_seq_max, True, False, 1
    cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED  # as LlamaBackend
    ctx = llama_cpp.llama_init_from_model(llm.model, cp)
    scheduler = SequenceScheduler("small", llm, ctx, parallel=4, context=512, n_batch=512,
                                  steps=threading.Lock(), cache_slots=cache_slots)
    try:
        yield scheduler, llm
    finally:
        scheduler.close()
        llama_cpp.llama_free(ctx)
        llm.close()


def test_a_full_kv_cache_makes_the_youngest_wait_or_end_clearly(
        bundled_model_path: Path) -> None:
    """Four sequences of up to 400 tokens in a KV cache of 512 cells: they cannot all fit.
    Each ends normally, or ends at "length" (its context was the cache), or fails with a
    clear kv_cache_full error; nothing crashes and the scheduler serves on."""
    with small_scheduler(bundled_model_path) as (scheduler, llm):
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


# -- shared prefixes ------------------------------------------------------------------------

INSTRUCTIONS = ("You are the front desk assistant of a hardware store. Answer in one short "
                "sentence, name the aisle when you know it, and never invent a price. ") * 6


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": question}]


QUESTIONS = ["Do you have hammers?", "Where are the screws?", "Can I return a drill?"]


@pytest.fixture(scope="module")
def uncached(bundled_model_path: Path) -> Iterator[LoadedLlama]:
    s = replace(spec(bundled_model_path, 8), prefix_cache=0)  # the same shape as `model`
    loaded = LlamaBackend().load(s, bundled_model_path, 1)
    yield loaded
    loaded.close()


def test_a_prompt_that_begins_like_an_ended_one_decodes_only_the_rest(
        model: LoadedLlama) -> None:
    params = GenerateParams(max_tokens=20, temperature=0)
    shared = [model.generate(chat(q), params, None) for q in QUESTIONS]
    # The first may find its instructions from an earlier test's run, the rest surely do.
    assert all(g.cached_tokens > 100 for g in shared[1:])
    assert all(g.cached_tokens < g.prompt_tokens and g.text for g in shared)
    # The same requests again: each finds its own whole prompt cached but the last two
    # tokens. (Not the same text for sure: llama.cpp rounds a batch of 2 rows otherwise
    # than one of 8, so a near tie can fall the other way; docs/models.md.)
    again = [model.generate(chat(q), params, None) for q in QUESTIONS]
    assert all(g.cached_tokens == g.prompt_tokens - 2 and g.text for g in again)
    exact = [model.generate(chat(q), replace(params, cache_prompt=False), None)
             for q in QUESTIONS]
    assert all(g.cached_tokens == 0 and g.text for g in exact)


def test_repetition_penalties_run_in_the_chain(model: LoadedLlama) -> None:
    prompt = "apple apple apple apple apple apple apple apple"  # a base model goes on
    plain = model.generate(prompt, GenerateParams(max_tokens=16, temperature=0), None)
    for params in (GenerateParams(max_tokens=16, temperature=0, presence_penalty=2.0),
                   GenerateParams(max_tokens=16, temperature=0, repeat_penalty=1.8),
                   GenerateParams(max_tokens=16, temperature=0.7, seed=3,
                                  frequency_penalty=2.0)):
        penalised = model.generate(prompt, params, None)
        assert penalised.text.count("apple") < plain.text.count("apple"), params


def test_a_prompt_shares_the_cells_of_a_sequence_still_running(model: LoadedLlama) -> None:
    params = GenerateParams(max_tokens=30, temperature=0)
    started = threading.Event()

    def first_token(_piece: str) -> bool:
        started.set()
        return True
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(model.generate, chat("Tell me about your paint aisle " * 8),
                              params, first_token)
        started.wait()  # its prompt is in the KV cache now
        second = model.generate(chat("Tell me about your paint aisle " * 4 + "and glue"),
                                GenerateParams(max_tokens=5, temperature=0), None)
        first = running.result()
    assert second.cached_tokens > 100 and first.completion_tokens > 0
    assert model.running() == 0


def test_cached_prefixes_give_way_when_the_kv_cache_is_full(bundled_model_path: Path) -> None:
    with small_scheduler(bundled_model_path, cache_slots=2) as (scheduler, llm):
        params = GenerateParams(max_tokens=20, temperature=0)
        one = llm.tokenize(("apple " * 290).encode(), True, False)  # 2 x 310 > 512 cells
        two = llm.tokenize(("pear " * 290).encode(), True, False)
        scheduler.generate(one, params, None)
        scheduler.generate(two, params, None)  # both fit only if the first's cells go
        assert scheduler.cached() == 1
        again = scheduler.generate([*two[:-1], one[1]], params, None)
        assert again.cached_tokens == len(two) - 2
