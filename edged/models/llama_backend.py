"""GGUF models through llama-cpp-python.

``llama_cpp`` is imported lazily: importing it maps the native library (tens of MiB), which
an ONNX-only box or a plain ``edged status`` should not pay for.

A model with ``embedding = true`` gets a second, small context for embeddings (mean
pooling). It maps the same file, so the weights are shared; on its own context the
generation context would have to keep logits for every prompt token (n_vocab x n_batch
floats, 512 MiB for Gemma's 262k vocabulary).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from edged.errors import BadRequest, IntegrityError
from edged.models.backend import TokenSink
from edged.models.chat_format import FORMATS, Part
from edged.models.config import ModelSpec
from edged.models.contract import GenerateParams, Generation
from edged.models.gguf_meta import GgufInfo, context_bytes, read_gguf
from edged.models.scheduler import SequenceScheduler

log = logging.getLogger(__name__)

EMBED_CTX = 512
EMBED_BATCH = 128
N_BATCH = 512  # tokens per decode step: every running sequence's next one plus prefill
HEAP_ROWS = 100  # the heap levels off near 100 vocabulary-sized float rows (see below)


class LlamaBackend:
    format = "gguf"

    def __init__(self) -> None:
        self._infos: dict[tuple[Path, int, int], GgufInfo] = {}
        self._primed: dict[Path, GgufInfo] = {}
        self._lock = threading.Lock()
        self._steps = threading.Lock()  # one decode at a time across all loaded models

    def info(self, path: Path) -> GgufInfo:
        """Blocking; cached per (path, size, mtime)."""
        try:
            return self._read(path, path.stat().st_size)
        except FileNotFoundError:
            with self._lock:
                primed = self._primed.get(path)
            if primed is None:
                raise
            return primed

    def prime(self, path: Path, header: Path, size: int) -> None:
        """Blocking: describe ``path`` (not assembled yet) from the chunk holding its header."""
        info = self._read(header, size)
        with self._lock:
            self._primed[path] = info

    def _read(self, path: Path, size: int) -> GgufInfo:
        key = (path, size, path.stat().st_mtime_ns)
        with self._lock:
            cached = self._infos.get(key)
        if cached is None:
            cached = read_gguf(path, size)
            with self._lock:
                self._infos[key] = cached
        return cached

    def shared_costs(self, path: Path) -> dict[str, int]:
        """The mmapped weights, paid once per file however many contexts map it; and
        llama.cpp's process-wide heap, paid once whatever is loaded. That heap grows by a
        few vocabulary-sized sampling buffers per request until it levels off (measured
        with Gemma's 262k vocabulary: +3 MiB a request, flat at +90-100 MiB after ~35
        requests, not returned by malloc_trim), so budget for where it levels off."""
        info = self.info(path)
        return {f"file:{path}": info.weights_bytes,
                "runtime:llama.cpp": info.n_vocab * 4 * HEAP_ROWS}

    def mappings(self, spec: ModelSpec) -> int:
        """How often a load maps its file (each context opens it), i.e. how many times its
        RSS delta holds the weights."""
        return 2 if spec.embedding else 1

    def estimate(self, spec: ModelSpec, path: Path, threads: int) -> int:
        """Bytes this alias adds on top of its file's (shared) weights."""
        info = self.info(path)
        extra = 0
        if spec.embedding:  # its own context, plus logits for a whole batch (see above)
            extra = context_bytes(info, EMBED_CTX, 1, EMBED_BATCH) + info.n_vocab * EMBED_BATCH * 4
        # KV cells for every sequence (cached prefixes share them), a logits row per
        # sequence id, and the repacked copy of the weights (each load has its own).
        parallel = parallel_of(spec)
        ids = parallel + cache_slots_of(spec)
        return context_bytes(info, spec.context * parallel, ids, N_BATCH) + extra \
            + info.n_vocab * 4 * (ids - 1) + info.repacked_bytes

    def warm_up(self) -> None:
        """Blocking: map the native library (once per process); llama.cpp's own log lines
        only for errors (llama-cpp-python prints them to stderr)."""
        from llama_cpp import _logger
        _logger.set_verbose(False)

    def load(self, spec: ModelSpec, path: Path, threads: int) -> LoadedLlama:
        info = self.info(path)  # a corrupt header fails here, with a clear message
        self.warm_up()
        import llama_cpp
        from llama_cpp._internals import LlamaModel

        def corrupt(e: Exception) -> IntegrityError:
            return IntegrityError(f"models.{spec.alias}: llama.cpp cannot load {path}: {e}",
                                  code="corrupt_model")

        params = llama_cpp.llama_model_default_params()
        # Repacked weights (llama.cpp's CPU_REPACK buffers, as llama-server loads them):
        # one client 0.96 -> 1.0 of llama-server, 8 clients 1.0 -> 1.02-1.05, for 13 MiB of
        # copied tensors. They were off for a batch invariance no setting gives
        # (docs/models.md, "Determinism").
        params.use_extra_bufts = True
        try:
            model: Any = LlamaModel(path_model=str(path), params=params, verbose=False)
        except ValueError as e:
            raise corrupt(e) from None
        ctx = _sequence_context(model, spec, threads)
        emb = None
        if spec.embedding:
            try:
                emb = llama_cpp.Llama(str(path), n_threads=threads, n_threads_batch=threads,
                                      verbose=False, n_ctx=EMBED_CTX, n_batch=EMBED_BATCH,
                                      n_ubatch=EMBED_BATCH, embedding=True,
                                      pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
            except ValueError as e:
                llama_cpp.llama_free(ctx)
                model.close()
                raise corrupt(e) from None
        scheduler = SequenceScheduler(spec.alias, model, ctx, parallel=parallel_of(spec),
                                      context=spec.context, n_batch=N_BATCH,
                                      steps=self._steps, cache_slots=cache_slots_of(spec))
        log.debug("loaded %s (%s, %d layers, %d sequences)", spec.alias, info.architecture,
                  info.n_layer, parallel_of(spec))
        return LoadedLlama(spec, model, ctx, scheduler, emb, self._steps)


def parallel_of(spec: ModelSpec) -> int:
    return spec.parallel or 1


def cache_slots_of(spec: ModelSpec) -> int:
    """Ended sequences kept as shared prefixes: one per running sequence unless set."""
    return parallel_of(spec) if spec.prefix_cache is None else spec.prefix_cache


def _sequence_context(model: Any, spec: ModelSpec, threads: int) -> Any:
    """One context for all of the model's sequences: a unified KV cache of ``context``
    cells per running sequence, which cached prefixes share."""
    import llama_cpp
    parallel = parallel_of(spec)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = spec.context * parallel
    cp.n_batch = cp.n_ubatch = N_BATCH
    cp.n_seq_max = parallel + cache_slots_of(spec)  # cached prefixes keep ids of their own
    # One logits row per sequence a step, not one per token (llama.cpp wants one per id).
    cp.n_outputs_max = cp.n_seq_max
    cp.n_threads = cp.n_threads_batch = threads
    cp.kv_unified = True
    cp.swa_full = False  # a sliding-window layer keeps its window per sequence, not n_ctx
    # Flash attention: 8 sequences decode 10 % faster (65 vs 72 ms a step, one 5 %); it was
    # off for batch invariance, which neither setting gives (docs/design-notes.md).
    cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    cp.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model.model, cp)
    if ctx is None:
        model.close()
        raise IntegrityError(f"models.{spec.alias}: llama.cpp could not create a context of "
                             f"{cp.n_ctx} tokens", code="corrupt_model")
    return ctx


class LoadedLlama:
    def __init__(self, spec: ModelSpec, model: Any, ctx: Any, scheduler: SequenceScheduler,
                 emb: Any | None, steps: threading.Lock) -> None:
        self._spec = spec
        self._model = model
        self._ctx = ctx
        self._scheduler = scheduler
        self._emb = emb
        self._steps = steps
        self._emb_lock = threading.Lock()
        self._format = FORMATS[spec.chat_format]
        self.parallel = parallel_of(spec)

    def running(self) -> int:
        """Sequences in the context right now (for /admin/ps)."""
        return self._scheduler.running()

    def cached(self) -> int:
        """Cached prefixes in the context (for /admin/ps)."""
        return self._scheduler.cached()

    def generate(self, prompt: str | Sequence[dict[str, Any]], params: GenerateParams,
                 on_token: TokenSink | None) -> Generation:
        """Runs among the model's other sequences; safe to call from several threads."""
        stops = list(params.stop)
        if isinstance(prompt, str):  # raw completion: the client's own prompt, markers and all
            tokens = self.tokenize(prompt, add_bos=True, special=True)
        else:
            tokens = self._tokens(self._format.parts(prompt))
            # Also under a grammar: a tool grammar's free-text branch has no end of its own,
            # and JSON strings may not hold the raw newline the transcript stops start with.
            stops += [s for s in self._format.stops if s not in stops]
        n_prompt = len(tokens)
        if n_prompt >= self._spec.context:
            raise BadRequest(f"the prompt is {n_prompt} tokens; model {self._spec.alias!r} has "
                             f"a context of {self._spec.context}", code="context_length_exceeded")
        if params.grammar is not None:
            self._scheduler.check_grammar(params.grammar)
        return self._scheduler.generate(tokens, replace(params, stop=tuple(stops)), on_token)

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        tokens: list[int] = self._model.tokenize(text.encode(), add_bos, special)
        return tokens

    def _tokens(self, parts: Sequence[Part]) -> list[int]:
        """Only the template's markers become special tokens; message text stays text."""
        tokens = self.tokenize("", add_bos=True, special=False)
        for text, marker in parts:
            if text:
                tokens += self.tokenize(text, add_bos=False, special=marker)
        return tokens

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self._emb is None:
            raise BadRequest(f"model {self._spec.alias!r} has no embeddings (set models."
                             f"{self._spec.alias}.embedding = true)", code="no_embeddings")
        with self._emb_lock, self._steps:  # one decode at a time on the box's cores
            vectors = self._emb.embed(list(texts), normalize=True)
        return [list(map(float, v)) for v in vectors]

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the embedding context reads for ``texts`` (as llama-cpp's ``embed`` does)."""
        return sum(len(self.tokenize(t, add_bos=True, special=False)) for t in texts)

    def classify(self, texts: Sequence[str]) -> list[list[float]]:
        raise BadRequest(f"model {self._spec.alias!r} is a generative model, not a classifier",
                         code="not_a_classifier")

    def close(self) -> None:
        import llama_cpp
        self._scheduler.close()
        llama_cpp.llama_free(self._ctx)
        self._model.close()
        if self._emb is not None:
            self._emb.close()
        self._emb = None
