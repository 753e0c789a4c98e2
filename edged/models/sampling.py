"""Per-sequence sampling in llama.cpp's own sampler chains, and stop strings.

Every token of every sequence is chosen on its row of the context's logits, without a
copy (``Picker``). A chain is built per request from its ``GenerateParams``: the
repetition penalties over the last ``PENALTY_LAST_N`` generated tokens (when asked for),
then top-k, top-p, min-p, temperature and a seeded draw; temperature 0 is a greedy pick.
A plain greedy pick is the row's argmax; a chain that starts with top-k runs on a
shortlist of the row that holds its k tokens; building the candidates of all 262k tokens
for ``llama_sampler_sample`` cost 0.34 ms a token, more than everything else a step does
per sequence.

A grammar (tools, ``response_format``) is not in the chain: checking every one of the
262k tokens against it cost 54-133 ms a token (scripts/bench/models.py samplers), against
~1 ms for the chain. As llama.cpp's own server does, the chain picks a token from the
unconstrained logits, the grammar checks that one token, and only when it refuses are the
logits filtered by the grammar and the chain run again (``Picker``). At temperature 0
this picks the same token as grammar-first (the best token the grammar allows). The
defaults of top_k and min_p (``GenerateParams``) are llama-cpp-python's
``create_completion`` ones (40, 0.05), so answers read as they did before the scheduler.

Stop strings are matched on text: a piece that could be the start of a stop string is held
back until the next piece decides, so a stop string never reaches the client.
"""

from __future__ import annotations

import codecs
import ctypes
import random
import threading
from collections import OrderedDict
from typing import Any

from edged.errors import BadRequest
from edged.models.contract import GenerateParams

GRAMMARS_KEPT = 16
PENALTY_LAST_N = 64  # llama.cpp's default window


class Grammars:
    """Parsed grammars by their text (bounded, least recently used out); a request gets a
    clone, so parsing is paid once per distinct grammar."""

    def __init__(self, vocab: Any) -> None:
        import llama_cpp
        self._vocab = vocab
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(vocab)
        self._parsed: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def clone(self, gbnf: str) -> Any:
        import llama_cpp
        with self._lock:
            parsed = self._parsed.get(gbnf)
            if parsed is None:
                parsed = self._parse(gbnf)
                self._parsed[gbnf] = parsed
                while len(self._parsed) > GRAMMARS_KEPT:
                    llama_cpp.llama_sampler_free(self._parsed.popitem(last=False)[1])
            self._parsed.move_to_end(gbnf)
            return llama_cpp.llama_sampler_clone(parsed)

    def check(self, gbnf: str) -> None:
        """Raise the 400 for a grammar llama.cpp cannot parse (before any sequence runs)."""
        import llama_cpp
        llama_cpp.llama_sampler_free(self.clone(gbnf))

    def _parse(self, gbnf: str) -> Any:
        import llama_cpp
        # llama.cpp returns NULL for a grammar that does not parse; handed on, it segfaults.
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not sampler:
            raise BadRequest("grammar: not a valid GBNF grammar (llama.cpp could not parse "
                             "it; the daemon log has its message)", code="invalid_grammar")
        return sampler

    def close(self) -> None:
        import llama_cpp
        with self._lock:
            for sampler in self._parsed.values():
                llama_cpp.llama_sampler_free(sampler)
            self._parsed.clear()


def grammar_of(params: GenerateParams, grammars: Grammars) -> Any:
    """The sequence's own grammar sampler (the caller frees it), or None."""
    return None if params.grammar is None else grammars.clone(params.grammar)


def chain(params: GenerateParams, grammars: Grammars) -> Any:
    """A new sampler chain for one sequence; the caller frees it (``llama_sampler_free``)."""
    import llama_cpp
    cp = llama_cpp.llama_sampler_chain_default_params()
    cp.no_perf = True
    smpl = llama_cpp.llama_sampler_chain_init(cp)
    add = llama_cpp.llama_sampler_chain_add
    if _penalised(params):
        add(smpl, llama_cpp.llama_sampler_init_penalties(
            grammars.n_vocab, PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty,
            params.presence_penalty))
    if params.temperature <= 0:
        add(smpl, llama_cpp.llama_sampler_init_greedy())
        return smpl
    if params.top_k > 0:
        add(smpl, llama_cpp.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1:
        add(smpl, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0:
        add(smpl, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
    add(smpl, llama_cpp.llama_sampler_init_temp(params.temperature))
    add(smpl, llama_cpp.llama_sampler_init_dist(_seed(params.seed)))
    return smpl


def _seed(seed: int | None) -> int:
    """llama.cpp takes a 32-bit seed; 0xFFFFFFFF means "random", so a client's seed is
    folded into the other values."""
    if seed is None:
        return random.getrandbits(32) % 0xFFFFFFFF
    return seed % 0xFFFFFFFF


SHORTLIST_SPAN = 12.0  # logits this far below the best: ~500 of 262k tokens on the bundled model
SHORTLIST_MAX = 8192


def argmax_only(params: GenerateParams) -> bool:
    """A greedy chain with nothing before the pick (no penalties): its token is the row's
    argmax, found without ``llama_sampler_sample`` building the candidates of the whole
    vocabulary (0.34 ms a token on this one, against 0.02 ms; ``Picker``)."""
    return params.temperature <= 0 and not _penalised(params)


def shortlist_of(params: GenerateParams) -> int:
    """The top_k a sampled chain starts with when nothing comes before it (no penalties):
    the chain may then run on a shortlist of the row that holds those k tokens. 0: the
    whole row."""
    return params.top_k if params.temperature > 0 and not _penalised(params) else 0


def _penalised(params: GenerateParams) -> bool:
    return (params.repeat_penalty, params.frequency_penalty, params.presence_penalty) \
        != (1.0, 0.0, 0.0)


class Picker:
    """Picks a sequence's next token from its row of the logits. One per scheduler (its
    step thread), with candidate buffers.

    A plain greedy sequence (``argmax_only``) takes the row's argmax, the token llama.cpp's
    greedy sampler picks (the first of the highest). A sampled chain that starts with
    top_k (``shortlist_of``) runs on the tokens within ``SHORTLIST_SPAN`` of the best
    logit when at least k of them are and the best k + 1 are all different (0.08 ms
    against 0.35 ms for the whole row): top_k then keeps the same k tokens in the same
    order either way, so the chain and its seeded draw do what they would on the whole
    row. Any other chain runs on the whole row, in C.

    A grammar-constrained sequence has its chain pick, the grammar check that one token,
    and the grammar filter the whole row only when it refuses (grammar last, as
    llama-server does): the grammar costs 54-133 ms on the whole row, ~1 ms on one."""

    def __init__(self, n_vocab: int) -> None:
        import llama_cpp
        import numpy as np
        self._n = n_vocab
        self._row = np.ctypeslib.as_array
        self._data, self._view, self._cur = _candidates(n_vocab)
        self._short_data, self._short_view, self._short = _candidates(SHORTLIST_MAX)
        self._ids = np.arange(n_vocab, dtype="<i4")
        self._one: Any = llama_cpp.llama_token_data(0, 1.0, 0.0)
        self._one_cur = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(self._one), size=1, selected=-1, sorted=False)

    def pick(self, ctx: Any, index: int, chain: Any, grammar: Any, greedy: bool,
             top_k: int) -> int:
        import llama_cpp
        logits = self._row(llama_cpp.llama_get_logits_ith(ctx, index), shape=(self._n,))
        if greedy:
            token = int(logits.argmax())
            if logits[token] != logits[token]:  # NaN: llama.cpp's greedy passes over it
                greedy = False
                token = -1
        if not greedy:
            token = self._shortlisted(chain, logits, top_k) if top_k else -1
            if token < 0:
                if grammar is None:  # samples and accepts, in C
                    return int(llama_cpp.llama_sampler_sample(chain, ctx, index))
                token = self._whole(chain, None, logits)
        if grammar is not None:
            self._one.id, self._one.logit = token, 1.0
            self._one_cur.selected = -1
            llama_cpp.llama_sampler_apply(grammar, ctypes.byref(self._one_cur))
            if self._one.logit == float("-inf"):  # refused: the grammar filters the row
                token = self._whole(chain, grammar, logits)
            llama_cpp.llama_sampler_accept(grammar, token)
        if not greedy:
            llama_cpp.llama_sampler_accept(chain, token)
        return token

    def _shortlisted(self, chain: Any, logits: Any, top_k: int) -> int:
        """The chain's pick among the tokens near the best one, or -1 when fewer than
        ``top_k`` of them are near (or too many for the buffer)."""
        import llama_cpp
        import numpy as np
        ids = np.flatnonzero(logits >= logits.max() - SHORTLIST_SPAN)
        n = len(ids)
        if n < top_k or n > SHORTLIST_MAX:
            return -1
        near = logits[ids]
        # Equal logits among the best k + 1: top-k's sort does not keep them in a fixed
        # order, and the seeded draw picks by position, so only the whole row is sure to
        # give what it would.
        first = n - min(n, top_k + 1)
        best = np.partition(near, first)[first:]
        if len(np.unique(best)) < len(best):
            return -1
        view = self._short_view[:n]
        view["id"] = ids
        view["logit"] = near
        view["p"] = 0.0
        cur = self._short
        cur.size, cur.selected, cur.sorted = n, -1, False
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(cur))
        return int(cur.data[cur.selected].id)

    def _whole(self, chain: Any, grammar: Any, logits: Any) -> int:
        import llama_cpp
        self._view["id"] = self._ids
        self._view["logit"] = logits
        self._view["p"] = 0.0
        cur = self._cur  # a sampler may shorten it (top-k) and sort it: start afresh
        cur.size, cur.selected, cur.sorted = self._n, -1, False
        if grammar is not None:
            llama_cpp.llama_sampler_apply(grammar, ctypes.byref(cur))
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(cur))
        return int(cur.data[cur.selected].id)


def _candidates(n: int) -> tuple[Any, Any, Any]:
    """A buffer of ``n`` llama_token_data, a numpy view of it and its token_data_array."""
    import llama_cpp
    import numpy as np
    data = (llama_cpp.llama_token_data * n)()
    view = np.frombuffer(memoryview(data), dtype=np.dtype(
        [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]))
    cur = llama_cpp.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
    return data, view, cur


class Pieces:
    """Token bytes -> text pieces for the client, with the stop strings cut out.

    ``feed`` returns the text that may be sent now; ``stopped`` says a stop string was
    found (the text before it was the last to be sent)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        text = self._held + self._utf8.decode(data)
        if not self._stops:
            self._held = ""
            return text
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """What is held back at the end (no stop string followed)."""
        text, self._held = self._held + self._utf8.decode(b"", final=True), ""
        return text

    def _partial(self, text: str) -> int:
        """Length of the longest tail of ``text`` that begins some stop string."""
        for n in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0


def token_bytes(vocab: Any, token: int, buf: ctypes.Array[ctypes.c_char]) -> bytes:
    """The bytes of one token as the model would print them (no special-token text)."""
    import llama_cpp
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n < 0:  # longer than the buffer
        bigger = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, bigger, -n, 0, False)
        return bigger.raw[:n]
    return buf.raw[:n]
