"""The scheduler's token picks against llama.cpp's own samplers, on the bundled model's
real logits (one low-level context, a prompt decoded token after token)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from edged.models.contract import GenerateParams
from edged.models.sampling import (
    SHORTLIST_MAX,
    SHORTLIST_SPAN,
    Grammars,
    Picker,
    argmax_only,
    chain,
    shortlist_of,
)
from tests.models.lowlevel import OneSequence

STEPS = 24
GREEDY = GenerateParams(max_tokens=STEPS, temperature=0)


@pytest.fixture(scope="module")
def context(bundled_model_path: Path) -> Iterator[OneSequence]:
    ctx = OneSequence(bundled_model_path)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def grammars(context: OneSequence) -> Iterator[Grammars]:
    g = Grammars(context.vocab)
    yield g
    g.close()


def run(context: OneSequence, prompt: str, pick: Any) -> list[int]:
    """The tokens ``pick(ctx)`` chooses, each fed back as the next input, up to the end of
    generation."""
    context.prefill(context.tokenize(prompt))
    out = []
    for _ in range(STEPS):
        token = pick(context.ctx)
        out.append(token)
        if context.c.llama_vocab_is_eog(context.vocab, token):
            break
        context.decode([token])
    return out


def by_llama_cpp(smpl: Any) -> Any:
    """llama.cpp's own pick on the whole last row (and its accept)."""
    import llama_cpp
    return lambda ctx: int(llama_cpp.llama_sampler_sample(smpl, ctx, -1))


def grammar_first(context: OneSequence, smpl: Any, grammar: Any) -> Any:
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
        context: OneSequence, grammars: Grammars, prompt: str) -> None:
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


class Shortlisted:
    """The picker on a sampled chain; counts the steps where the shortlist holds the k
    tokens (worked out here from the row, not from the picker)."""

    def __init__(self, picker: Picker, smpl: Any, top_k: int, n_vocab: int) -> None:
        self._picker, self._smpl, self._k, self._n = picker, smpl, top_k, n_vocab
        self.near = 0

    def __call__(self, ctx: Any) -> int:
        import llama_cpp
        import numpy as np
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(self._n,))
        self.near += int(self._k <= (row >= row.max() - SHORTLIST_SPAN).sum() <= SHORTLIST_MAX)
        return self._picker.pick(ctx, -1, self._smpl, None, False, self._k)


@pytest.mark.parametrize("top_k", [40, 5, 10_000], ids=["default", "few", "whole-row"])
def test_a_sampled_pick_on_the_shortlist_is_the_chains_pick_on_the_whole_row(
        context: OneSequence, grammars: Grammars, top_k: int) -> None:
    """The same seeded chain, once through the picker, once through llama.cpp on all 262k
    tokens. 40 and 5 take the shortlist (at most steps); 10,000 is more than the shortlist
    holds, so the whole row."""
    import llama_cpp
    params = GenerateParams(max_tokens=STEPS, temperature=0.9, top_k=top_k, seed=11)
    assert shortlist_of(params) == top_k
    mine, theirs = chain(params, grammars), chain(params, grammars)
    try:
        ours = Shortlisted(Picker(grammars.n_vocab), mine, top_k, grammars.n_vocab)
        picked = run(context, "Once upon a time", ours)
        reference = run(context, "Once upon a time",
                        by_llama_cpp(theirs))
    finally:
        llama_cpp.llama_sampler_free(mine)
        llama_cpp.llama_sampler_free(theirs)
    assert picked == reference
    assert (ours.near > 0) == (top_k <= SHORTLIST_MAX)


def rows(*logits: list[float]) -> Any:
    import numpy as np
    return [np.array(row, dtype=np.float32) for row in logits]


def test_the_shortlist_gives_way_to_the_whole_row_on_ties_and_far_tokens(
        grammars: Grammars) -> None:
    """Hand-made rows: k near tokens all different -> a pick from the shortlist; two equal
    among the best k + 1, or fewer than k near -> -1 (the whole row decides)."""
    import llama_cpp
    import numpy as np
    params = GenerateParams(temperature=0.9, top_k=3, seed=5)
    picker = Picker(grammars.n_vocab)
    far = -100.0
    distinct, tied, few = rows([5, 4, 3, 2, far], [5, 4, 3, 3, far], [5, 4, far, far, far])
    for row, expect_shortlist in ((distinct, True), (tied, False), (few, False)):
        padded = np.full(grammars.n_vocab, far, dtype=np.float32)
        padded[:len(row)] = row
        smpl = chain(params, grammars)
        try:
            token = picker._shortlisted(smpl, padded, 3)
        finally:
            llama_cpp.llama_sampler_free(smpl)
        assert (token >= 0) == expect_shortlist
        if expect_shortlist:
            assert token in (0, 1, 2)  # one of the top 3


def test_penalties_or_a_temperature_keep_the_chain(grammars: Grammars) -> None:
    assert not argmax_only(replace(GREEDY, repeat_penalty=1.1))
    assert not argmax_only(replace(GREEDY, presence_penalty=0.5))
    assert not argmax_only(replace(GREEDY, temperature=0.7))
    sampled = replace(GREEDY, temperature=0.7)
    assert shortlist_of(sampled) == 40
    assert shortlist_of(replace(sampled, frequency_penalty=0.5)) == 0
    assert shortlist_of(replace(sampled, top_k=0)) == 0
    assert shortlist_of(GREEDY) == 0


GBNF = r'''root ::= "{\"name\": \"" [a-z]+ "\"}"'''
FRUIT = "Write the name of a fruit:"


@pytest.mark.parametrize("params", [GREEDY, replace(GREEDY, temperature=0.8, seed=3)],
                         ids=["greedy", "sampled"])
def test_grammar_last_picks_what_grammar_first_picks(
        context: OneSequence, grammars: Grammars, params: GenerateParams) -> None:
    """A JSON object answer. Unconstrained, the model's first token is not ``{``, so the
    grammar refuses it and the row is filtered; at temperature 0 both orders pick the
    same tokens, sampled both stay in the grammar."""
    import llama_cpp
    free = chain(GREEDY, grammars)
    try:
        unconstrained = run(context, FRUIT, by_llama_cpp(free))
    finally:
        llama_cpp.llama_sampler_free(free)
    assert not _piece(context, unconstrained[0]).startswith(b"{")  # a refusal comes
    picker = Picker(grammars.n_vocab)
    greedy, top_k = argmax_only(params), shortlist_of(params)
    picks = []
    for last in (True, False):
        smpl, grammar = chain(params, grammars), grammars.clone(GBNF)
        try:
            pick = partial(picker.pick, index=-1, chain=smpl, grammar=grammar, greedy=greedy,
                           top_k=top_k) if last else grammar_first(context, smpl, grammar)
            picks.append(run(context, FRUIT, pick))
        finally:
            llama_cpp.llama_sampler_free(smpl)
            llama_cpp.llama_sampler_free(grammar)
    if params.temperature <= 0:  # the same token: the best the grammar allows
        assert picks[0] == picks[1]
    for p in picks:
        text = b"".join(_piece(context, t) for t in p)
        assert text.startswith(b'{"name": "')


def _piece(context: OneSequence, token: int) -> bytes:
    from edged.models.sampling import token_bytes
    return token_bytes(context.vocab, token, ctypes.create_string_buffer(64))
