"""Continuous batching: many sequences in one llama.cpp context.

One context per loaded GGUF model holds ``parallel`` sequences in a unified KV cache. A
thread of its own runs steps: each step is one ``llama_decode`` with one token for every
sequence that is generating plus a chunk of a waiting prompt's prefill, within ``n_batch``
tokens; then every sequence picks its next token with its own sampler chain (in C, on its
row of the logits). A sequence joins at the next step after it arrives and leaves (its KV
cells freed) at the step it ends: end of generation, a stop string, max_tokens, its
context, or its client gone (``on_token`` returning False).

Determinism: a sequence's tokens depend only on its prompt, its own seeded chain and its
logits. Decoded whole (no cached prefix) and alone, a request with a seed (or at
temperature 0) gives the same text whatever ran before it (tests/models/test_scheduler.py).
Beside other sequences its logits can differ in the last bits: llama.cpp's CPU kernels
round differently by batch shape (docs/models.md, "Determinism").

Shared prefixes: a sequence that ends keeps its KV cells as a cached prefix (up to
``cache_slots`` of them, least recently used out). A new prompt that begins like a cached
or a running sequence (an agent's instructions and tool prompt; a chat's earlier turns)
shares those cells (``llama_memory_seq_cp``: in a unified KV cache a copy is bookkeeping,
not data) and decodes only the rest. Cached prefixes hold cells of the same KV cache the
budget already charges for ``parallel`` sequences; when a step finds the cache full they
are the first to go.

Every ``llama_decode`` of the process takes ``steps`` (one lock shared by all models), so
two loaded models never run two decodes on the same cores at once.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edged.errors import Unavailable
from edged.models.backend import TokenSink
from edged.models.contract import GenerateParams, Generation
from edged.models.sampling import (
    Grammars,
    Picker,
    Pieces,
    argmax_only,
    chain,
    grammar_of,
    shortlist_of,
    token_bytes,
)

log = logging.getLogger(__name__)

MIN_SHARED = 16  # fewer common tokens are cheaper to decode than to look after


@dataclass
class _Seq:
    prompt: list[int]
    params: GenerateParams
    on_token: TokenSink | None
    sampler: Any
    grammar: Any  # its grammar sampler, outside the chain (sampling.Picker), or None
    greedy: bool  # the argmax of its row (sampling.argmax_only)
    top_k: int  # its chain may run on a shortlist of the row (sampling.shortlist_of)
    order: int  # admission order: the highest is the youngest
    pieces: Pieces
    feed: list[int] = field(default_factory=list)  # tokens still to decode
    seq_id: int = -1
    kv: list[int] = field(default_factory=list)  # the tokens in its KV cells, in order
    shared: int = 0  # prompt tokens found in the cache instead of decoded
    generated: int = 0
    text: list[str] = field(default_factory=list)
    result: Generation | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def pos(self) -> int:
        return len(self.kv)


@dataclass
class _Cached:
    """The KV cells of a sequence that ended, kept under its id for a prompt that shares
    their beginning."""
    seq_id: int
    kv: list[int]


class SequenceScheduler:
    def __init__(self, name: str, model: Any, ctx: Any, *, parallel: int, context: int,
                 n_batch: int, steps: threading.Lock, cache_slots: int = 0) -> None:
        import llama_cpp
        self._name = name
        self._vocab = model.vocab
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._parallel = parallel
        self._context = context
        self._n_batch = n_batch
        self._steps = steps
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._grammars = Grammars(model.vocab)
        self._picker = Picker(self._grammars.n_vocab)
        self._piece_buf = ctypes.create_string_buffer(64)
        self._order = itertools.count()
        # Sequence ids: ``parallel`` running at most, ``cache_slots`` cached prefixes.
        self._free_ids = list(range(parallel + cache_slots))
        self._cache_slots = cache_slots
        self._cached: OrderedDict[int, _Cached] = OrderedDict()  # least recently used first
        self._n_swa = llama_cpp.llama_model_n_swa(model.model)
        self._waiting: deque[_Seq] = deque()
        self._held: list[_Seq] = []  # gave way to a full KV cache: wait for a sequence to end
        self._running: list[_Seq] = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._main, name=f"steps-{name}", daemon=True)
        self._thread.start()

    # -- callers (any thread) ----------------------------------------------------------

    def generate(self, prompt: Sequence[int], params: GenerateParams,
                 on_token: TokenSink | None) -> Generation:
        """Blocking: run one sequence to its end among the others."""
        grammar = grammar_of(params, self._grammars)
        seq = _Seq(list(prompt), params, on_token, chain(params, self._grammars), grammar,
                   argmax_only(params), shortlist_of(params), next(self._order),
                   Pieces(params.stop))
        with self._cond:
            if self._closing:
                _free_sampler(seq.sampler)
                _free_sampler(seq.grammar)
                raise Unavailable(f"model {self._name!r} is unloading", code="model_unloading")
            self._waiting.append(seq)
            self._cond.notify()
        seq.done.wait()
        if seq.error is not None:
            raise seq.error
        assert seq.result is not None
        return seq.result

    def check_grammar(self, gbnf: str) -> None:
        self._grammars.check(gbnf)

    def running(self) -> int:
        """Sequences holding a place in the context (prefilling or generating)."""
        return len(self._running)

    def cached(self) -> int:
        """Prefixes kept for prompts that begin the same way."""
        return len(self._cached)

    def close(self) -> None:
        """Stop the thread once no sequence runs (the worker drained them); free it all."""
        import llama_cpp
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        self._grammars.close()

    # -- the step thread ---------------------------------------------------------------

    def _main(self) -> None:
        while True:
            with self._cond:
                while not (self._running or self._waiting or self._closing):
                    self._cond.wait()
                if self._closing and not self._running:
                    self._waiting.extend(self._held)
                    self._held.clear()
                    while self._waiting:
                        self._end(self._waiting.popleft(), error=Unavailable(
                            f"model {self._name!r} is unloading", code="model_unloading"))
                    while self._cached:
                        self._evict()
                    return
                self._admit()
            try:
                self._step()
            except BaseException as e:  # a bug here must not leave callers waiting forever
                log.exception("model %s: decode step failed", self._name)
                for seq in list(self._running):
                    self._end(seq, error=e)

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self._parallel:
            # Most urgent first (priority, then arrival); the worker already orders its
            # queue, this keeps the order among requests that reach the context together.
            seq = min(self._waiting, key=lambda s: (s.params.priority, s.order))
            self._waiting.remove(seq)
            self._place(seq)
            self._running.append(seq)

    def _place(self, seq: _Seq) -> None:
        """Give ``seq`` an id, and the cells of the longest prefix of its prompt that a
        cached or running sequence already holds."""
        import llama_cpp
        best: _Seq | _Cached | None = None
        shared = 0
        others: list[_Seq | _Cached] = [*self._cached.values(), *self._running] \
            if seq.params.cache_prompt else []
        for other in others:
            n = self._reusable(other, seq.prompt)
            if n > shared:
                best, shared = other, n
        if isinstance(best, _Cached) and (shared == len(seq.prompt) - 2 or not self._free_ids):
            # The prompt extends what it holds (a chat's next turn, a repeat), or no id is
            # free: take over its id; its cells past the prefix go, and the rest of the
            # prompt lands where they were.
            del self._cached[best.seq_id]
            seq.seq_id = best.seq_id
            llama_cpp.llama_memory_seq_rm(self._mem, seq.seq_id, shared, -1)
        else:
            if not self._free_ids:  # the cache has the ids a new sequence needs
                self._evict()
            seq.seq_id = self._free_ids.pop(0)
            if best is not None:  # the cells are shared, not copied
                llama_cpp.llama_memory_seq_cp(self._mem, best.seq_id, seq.seq_id, 0, shared)
                if isinstance(best, _Cached):
                    self._cached.move_to_end(best.seq_id)
        seq.kv = seq.prompt[:shared]
        seq.feed = seq.prompt[shared:]
        seq.shared = shared

    def _reusable(self, other: _Seq | _Cached, prompt: list[int]) -> int:
        """How many of ``prompt``'s first tokens can come from ``other``'s cells: their
        common prefix, less the last two prompt tokens, and nothing when a sliding-window
        layer has already dropped cells the rest would attend to.

        Two tokens, not one: llama.cpp computes a lone token with other kernels than a
        batch of rows (llamafile's sgemm starts at two), so the rest of a cached prompt is
        decoded on the batched kernels its first prefill used. (That narrows, not closes,
        the gap to a prompt decoded whole: docs/models.md, "Determinism".)"""
        kv = other.kv
        n = 0
        limit = min(len(kv), len(prompt) - 2)
        while n < limit and kv[n] == prompt[n]:
            n += 1
        if n < MIN_SHARED:
            return 0
        if self._n_swa > 0:
            import llama_cpp
            first = llama_cpp.llama_memory_seq_pos_min(self._mem, other.seq_id)
            if first > max(0, n - self._n_swa):
                return 0
        return n

    def _keep(self, seq: _Seq) -> None:
        """Its cells stay as a cached prefix; the least recently used beyond the bound go."""
        self._cached[seq.seq_id] = _Cached(seq.seq_id, seq.kv)
        while len(self._cached) > self._cache_slots:
            self._evict()

    def _evict(self) -> None:
        """Drop the least recently used cached prefix."""
        import llama_cpp
        _id, cached = self._cached.popitem(last=False)
        llama_cpp.llama_memory_seq_rm(self._mem, cached.seq_id, -1, -1)
        self._free_ids.append(cached.seq_id)

    def _step(self) -> None:
        import llama_cpp
        planned = self._plan()
        with self._steps:
            rc = llama_cpp.llama_decode(self._ctx, self._batch)
        if rc == 1:
            self._kv_full(planned)
            return
        if rc != 0:
            for seq, _n, _out in planned:
                llama_cpp.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
                self._end(seq, error=Unavailable(
                    f"model {self._name!r}: llama_decode failed ({rc})", code="decode_failed"))
            return
        for seq, n, out in planned:
            seq.kv += seq.feed[:n]
            del seq.feed[:n]
            if out >= 0:
                self._sample(seq, out)

    def _plan(self) -> list[tuple[_Seq, int, int]]:
        """Fill the batch: generating sequences first (one token each), then prefill chunks
        in arrival order. Returns (sequence, tokens added, batch index of its logits row
        or -1)."""
        batch = self._batch
        planned: list[tuple[_Seq, int, int]] = []
        i = 0
        for seq in sorted(self._running, key=lambda s: (s.generated == 0, s.order)):
            room = self._n_batch - i
            if room <= 0:
                break
            n = min(room, len(seq.feed))
            for j in range(n):
                batch.token[i + j] = seq.feed[j]
                batch.pos[i + j] = seq.pos + j
                batch.n_seq_id[i + j] = 1
                batch.seq_id[i + j][0] = seq.seq_id
                batch.logits[i + j] = 0
            last = n == len(seq.feed)
            if last:
                batch.logits[i + n - 1] = 1
            planned.append((seq, n, i + n - 1 if last else -1))
            i += n
        batch.n_tokens = i
        return planned

    def _sample(self, seq: _Seq, index: int) -> None:
        import llama_cpp
        token = self._picker.pick(self._ctx, index, seq.sampler, seq.grammar, seq.greedy,
                                  seq.top_k)
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop")
            return
        seq.generated += 1
        text = seq.pieces.feed(token_bytes(self._vocab, token, self._piece_buf))
        if text and not self._emit(seq, text):
            self._finish(seq, "cancelled")
        elif seq.pieces.stopped:
            self._finish(seq, "stop")
        elif seq.generated >= seq.params.max_tokens or seq.pos >= self._context:
            self._finish(seq, "length")
        else:
            seq.feed = [token]

    def _emit(self, seq: _Seq, text: str) -> bool:
        seq.text.append(text)
        return seq.on_token is None or seq.on_token(text)

    def _kv_full(self, planned: list[tuple[_Seq, int, int]]) -> None:
        """No KV cells for this batch: the youngest sequence gives way. One still on its
        prompt waits for the others (or fails if it is alone); one already generating
        ends as if its context were full."""
        import llama_cpp
        if self._cached:  # cached prefixes go first; the same batch is tried again
            self._evict()
            return
        youngest = max((seq for seq, _n, _out in planned), key=lambda s: s.order)
        log.warning("model %s: KV cache full with %d sequences; the youngest gives way",
                    self._name, len(self._running))
        if youngest.generated:
            self._finish(youngest, "length")
            return
        if len(self._running) == 1:
            self._end(youngest, error=Unavailable(
                f"model {self._name!r}: the prompt ({len(youngest.prompt)} tokens) does not "
                "fit in the free KV cache", code="kv_cache_full"))
            return
        llama_cpp.llama_memory_seq_rm(self._mem, youngest.seq_id, -1, -1)
        self._running.remove(youngest)
        self._free_ids.append(youngest.seq_id)
        youngest.seq_id, youngest.kv, youngest.feed = -1, [], list(youngest.prompt)
        self._held.append(youngest)

    def _finish(self, seq: _Seq, reason: str) -> None:
        if reason != "cancelled":
            tail = seq.pieces.flush()
            if tail and not seq.pieces.stopped:
                self._emit(seq, tail)
        self._end(seq, result=Generation(
            text="".join(seq.text), finish_reason=reason, prompt_tokens=len(seq.prompt),
            completion_tokens=seq.generated, cached_tokens=seq.shared))

    def _end(self, seq: _Seq, *, result: Generation | None = None,
             error: BaseException | None = None) -> None:
        import llama_cpp
        if seq in self._running:
            self._running.remove(seq)
            if error is None and self._cache_slots and seq.kv:
                self._keep(seq)
            else:
                llama_cpp.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
                self._free_ids.append(seq.seq_id)
            with self._cond:  # its cells are free: what gave way goes first
                self._waiting.extendleft(reversed(self._held))
            self._held.clear()
        seq.result, seq.error = result, error
        _free_sampler(seq.sampler)
        _free_sampler(seq.grammar)
        seq.sampler = seq.grammar = None
        seq.done.set()


def _free_sampler(sampler: Any) -> None:
    if sampler is not None:
        import llama_cpp
        llama_cpp.llama_sampler_free(sampler)
