"""Continuous batching: many sequences in one llama.cpp context.

One context per loaded GGUF model holds ``parallel`` sequences in a unified KV cache. A
thread of its own runs steps: each step is one ``llama_decode`` with one token for every
sequence that is generating plus a chunk of a waiting prompt's prefill, within ``n_batch``
tokens; then every sequence picks its next token with its own sampler chain (in C, on its
row of the logits). A sequence joins at the next step after it arrives and leaves (its KV
cells freed) at the step it ends: end of generation, a stop string, max_tokens, its
context, or its client gone (``on_token`` returning False).

Determinism: a sequence's tokens depend only on its prompt and its own seeded chain, and
llama.cpp computes each row of a batch as it would alone, so a request with a seed (or at
temperature 0) gives the same text whatever else runs (tests/models/test_scheduler.py).

Every ``llama_decode`` of the process takes ``steps`` (one lock shared by all models), so
two loaded models never run two decodes on the same cores at once.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edged.errors import Unavailable
from edged.models.backend import TokenSink
from edged.models.contract import GenerateParams, Generation
from edged.models.sampling import Grammars, Pieces, chain, token_bytes

log = logging.getLogger(__name__)


@dataclass
class _Seq:
    prompt: list[int]
    params: GenerateParams
    on_token: TokenSink | None
    sampler: Any
    order: int  # admission order: the highest is the youngest
    pieces: Pieces
    feed: list[int] = field(default_factory=list)  # tokens still to decode
    seq_id: int = -1
    pos: int = 0  # tokens of this sequence in the KV cache
    generated: int = 0
    text: list[str] = field(default_factory=list)
    result: Generation | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class SequenceScheduler:
    def __init__(self, name: str, model: Any, ctx: Any, *, parallel: int, context: int,
                 n_batch: int, steps: threading.Lock) -> None:
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
        self._piece_buf = ctypes.create_string_buffer(64)
        self._order = itertools.count()
        self._free_ids = list(range(parallel))
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
        seq = _Seq(list(prompt), params, on_token, chain(params, self._grammars),
                   next(self._order), Pieces(params.stop))
        seq.feed = list(seq.prompt)
        with self._cond:
            if self._closing:
                _free_sampler(seq.sampler)
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
                    return
                self._admit()
            try:
                self._step()
            except BaseException as e:  # a bug here must not leave callers waiting forever
                log.exception("model %s: decode step failed", self._name)
                for seq in list(self._running):
                    self._end(seq, error=e)

    def _admit(self) -> None:
        while self._waiting and self._free_ids:
            seq = self._waiting.popleft()
            seq.seq_id = self._free_ids.pop(0)
            self._running.append(seq)

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
            seq.pos += n
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
        token = llama_cpp.llama_sampler_sample(seq.sampler, self._ctx, index)
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
        youngest.seq_id, youngest.pos, youngest.feed = -1, 0, list(youngest.prompt)
        self._held.append(youngest)

    def _finish(self, seq: _Seq, reason: str) -> None:
        if reason != "cancelled":
            tail = seq.pieces.flush()
            if tail and not seq.pieces.stopped:
                self._emit(seq, tail)
        self._end(seq, result=Generation(
            text="".join(seq.text), finish_reason=reason, prompt_tokens=len(seq.prompt),
            completion_tokens=seq.generated))

    def _end(self, seq: _Seq, *, result: Generation | None = None,
             error: BaseException | None = None) -> None:
        import llama_cpp
        if seq in self._running:
            llama_cpp.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
            self._running.remove(seq)
            self._free_ids.append(seq.seq_id)
            with self._cond:  # its cells are free: what gave way goes first
                self._waiting.extendleft(reversed(self._held))
            self._held.clear()
        seq.result, seq.error = result, error
        _free_sampler(seq.sampler)
        seq.sampler = None
        seq.done.set()


def _free_sampler(sampler: Any) -> None:
    if sampler is not None:
        import llama_cpp
        llama_cpp.llama_sampler_free(sampler)
