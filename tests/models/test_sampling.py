"""The scheduler's token picks against llama.cpp's own samplers, on the bundled model's
real logits (one low-level context, a prompt decoded token after token)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edged.models.contract import GenerateParams
from edged.models.sampling import Grammars, Picker, argmax_only, chain, shortlist_of

STEPS = 24
GREEDY = GenerateParams(max_tokens=STEPS, temperature=0)


class Context:
    """One sequence decoded a token at a time; ``logits`` index -1 is its last row."""

    def __init__(self, path: Path) -> None:
        import llama_cpp
        self.c = llama_cpp
        self.model = llama_cpp.llama_model_load_from_file(
            str(path).encode(), llama_cpp.llama_model_default_params())
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 256, 256, 1, 1
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        self.batch = llama_cpp.llama_batch_init(256, 0, 1)
        self.pos = 0

    def start(self, text: str) -> None:
        self.c.llama_memory_clear(self.c.llama_get_memory(self.ctx), True)
        self.pos = 0
        buf = (self.c.llama_token * 128)()
        data = text.encode()
        n = self.c.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, False)
        self.feed(list(buf[:n]))

    def feed(self, tokens: list[int]) -> None:
        b = self.batch
        for j, tok in enumerate(tokens):
            b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, self.pos + j, 1, 0
            b.seq_id[j][0] = 0
        b.logits[len(tokens) - 1] = 1
        b.n_tokens = len(tokens)
        assert self.c.llama_decode(self.ctx, b) == 0
        self.pos += len(tokens)

    def close(self) -> None:
        self.c.llama_batch_free(self.batch)
        self.c.llama_free(self.ctx)
        self.c.llama_model_free(self.model)


@pytest.fixture(scope="module")
def context(bundled_model_path: Path) -> Iterator[Context]:
    ctx = Context(bundled_model_path)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def grammars(context: Context) -> Iterator[Grammars]:
    g = Grammars(context.vocab)
    yield g
    g.close()


def run(context: Context, prompt: str, pick: Any) -> list[int]:
    """The tokens ``pick(ctx)`` chooses, each fed back as the next input, up to the end of
    generation."""
    context.start(prompt)
    out = []
    for _ in range(STEPS):
        token = pick(context.ctx)
        out.append(token)
        if context.c.llama_vocab_is_eog(context.vocab, token):
            break
        context.feed([token])
    return out


def grammar_first(context: Context, smpl: Any, grammar: Any) -> Any:
    """The reference for a grammar: filter the whole row, then the chain (llama.cpp)."""
    import llama_cpp
    n = llama_cpp.llama_vocab_n_tokens(context.vocab)
    data = (llama_cpp.llama_token_data * n)()

    def pick(ctx: Any) -> int:
        row = llama_cpp.llama_get_logits_ith(ctx, -1)
        for i in range(n):
            data[i].id, data[i].logit, data[i].p = i, row[i], 0.0
        cur = llama_cpp.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(cur))
        llama_cpp.llama_sampler_apply(smpl, ctypes.byref(cur))
        token = int(cur.data[cur.selected].id)
        llama_cpp.llama_sampler_accept(grammar, token)
        llama_cpp.llama_sampler_accept(smpl, token)
        return token
    return pick


@pytest.mark.parametrize("prompt", ["Once upon a time", "The capital of France is",
                                    "def fibonacci(n):"])
def test_a_greedy_pick_is_what_llama_cpps_greedy_sampler_picks(
        context: Context, grammars: Grammars, prompt: str) -> None:
    import llama_cpp
    assert argmax_only(GREEDY)
    picker = Picker(grammars.n_vocab)
    smpl = chain(GREEDY, grammars)
    try:
        ours = run(context, prompt, lambda ctx: picker.pick(ctx, -1, smpl, None, True, 0))
        theirs = run(context, prompt, lambda ctx: llama_cpp.llama_sampler_sample(smpl, ctx, -1))
    finally:
        llama_cpp.llama_sampler_free(smpl)
    assert ours == theirs


@pytest.mark.parametrize("top_k", [40, 5, 1000], ids=["default", "few", "more-than-near"])
def test_a_sampled_pick_on_the_shortlist_is_the_chains_pick_on_the_whole_row(
        context: Context, grammars: Grammars, top_k: int) -> None:
    """The same seeded chain, once through the shortlist, once through llama.cpp on all
    262k tokens: the same tokens (1000 is more than lie near the best: the whole row)."""
    import llama_cpp
    params = GenerateParams(max_tokens=STEPS, temperature=0.9, top_k=top_k, seed=11)
    assert shortlist_of(params) == top_k
    picker = Picker(grammars.n_vocab)
    picks = []
    for mine in (True, False):
        smpl = chain(params, grammars)
        try:
            picks.append(run(context, "Once upon a time", (lambda ctx: picker.pick(
                ctx, -1, smpl, None, False, top_k)) if mine else (
                lambda ctx: llama_cpp.llama_sampler_sample(smpl, ctx, -1))))
        finally:
            llama_cpp.llama_sampler_free(smpl)
    assert picks[0] == picks[1]


def test_penalties_or_a_temperature_keep_the_chain(grammars: Grammars) -> None:
    assert not argmax_only(replace(GREEDY, repeat_penalty=1.1))
    assert not argmax_only(replace(GREEDY, presence_penalty=0.5))
    assert not argmax_only(replace(GREEDY, temperature=0.7))
    sampled = replace(GREEDY, temperature=0.7)
    assert shortlist_of(sampled) == 40
    assert shortlist_of(replace(sampled, frequency_penalty=0.5)) == 0
    assert shortlist_of(replace(sampled, top_k=0)) == 0
    assert shortlist_of(GREEDY) == 0


@pytest.mark.parametrize("params", [GREEDY, replace(GREEDY, temperature=0.8, seed=3)],
                         ids=["greedy", "sampled"])
def test_grammar_last_picks_what_grammar_first_picks(
        context: Context, grammars: Grammars, params: GenerateParams) -> None:
    """A JSON object answer: the first tokens the model would write unconstrained are not
    JSON, so the grammar refuses some and the row is filtered."""
    import llama_cpp
    gbnf = r'''root ::= "{" ws "\"name\":" ws "\"" [a-z ]+ "\"" ws "}"
ws ::= [ \t\n]*'''
    picker = Picker(grammars.n_vocab)
    picks = []
    for mine in (True, False):
        smpl, grammar = chain(params, grammars), grammars.clone(gbnf)
        try:
            if mine:
                greedy, top_k = argmax_only(params), shortlist_of(params)
                picks.append(run(context, "Write the name of a fruit:", lambda ctx: picker.pick(
                    ctx, -1, smpl, grammar, greedy, top_k)))
            else:
                picks.append(run(context, "Write the name of a fruit:",
                                 grammar_first(context, smpl, grammar)))
        finally:
            llama_cpp.llama_sampler_free(smpl)
            llama_cpp.llama_sampler_free(grammar)
    if params.temperature <= 0:  # the same token: the best the grammar allows
        assert picks[0] == picks[1]
    text = [b"".join(_piece(context, t) for t in p) for p in picks]
    assert all(t.startswith(b"{") for t in text)


def _piece(context: Context, token: int) -> bytes:
    from edged.models.sampling import token_bytes
    return token_bytes(context.vocab, token, ctypes.create_string_buffer(64))
