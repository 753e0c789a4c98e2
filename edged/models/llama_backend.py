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
from pathlib import Path
from typing import Any

from edged.errors import BadRequest, IntegrityError
from edged.models.backend import TokenSink
from edged.models.chat_format import FORMATS, Part
from edged.models.config import ModelSpec
from edged.models.contract import GenerateParams, Generation
from edged.models.gguf_meta import GgufInfo, context_bytes, read_gguf

log = logging.getLogger(__name__)

EMBED_CTX = 512
EMBED_BATCH = 128
HEAP_ROWS = 100  # the heap levels off near 100 vocabulary-sized float rows (see below)


class LlamaBackend:
    format = "gguf"

    def __init__(self) -> None:
        self._infos: dict[tuple[Path, int, int], GgufInfo] = {}
        self._primed: dict[Path, GgufInfo] = {}
        self._lock = threading.Lock()

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
            extra = context_bytes(info, EMBED_CTX) + info.n_vocab * EMBED_BATCH * 4
        return context_bytes(info, spec.context) + extra

    def warm_up(self) -> None:
        """Blocking: map the native library (once per process)."""
        import llama_cpp  # noqa: F401

    def load(self, spec: ModelSpec, path: Path, threads: int) -> LoadedLlama:
        info = self.info(path)  # a corrupt header fails here, with a clear message
        import llama_cpp

        def open_context(**kw: Any) -> Any:
            try:
                return llama_cpp.Llama(str(path), n_threads=threads, n_threads_batch=threads,
                                       verbose=False, **kw)
            except ValueError as e:
                raise IntegrityError(f"models.{spec.alias}: llama.cpp cannot load {path}: {e}",
                                     code="corrupt_model") from None

        llm = open_context(n_ctx=spec.context)
        emb = None
        if spec.embedding:
            emb = open_context(n_ctx=EMBED_CTX, n_batch=EMBED_BATCH, n_ubatch=EMBED_BATCH,
                               embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        log.debug("loaded %s (%s, %d layers)", spec.alias, info.architecture, info.n_layer)
        return LoadedLlama(spec, llm, emb)


class LoadedLlama:
    def __init__(self, spec: ModelSpec, llm: Any, emb: Any | None) -> None:
        self._spec = spec
        self._llm = llm
        self._emb = emb
        self._format = FORMATS[spec.chat_format]
        self._grammars: dict[str, Any] = {}

    def generate(self, prompt: str | Sequence[dict[str, Any]], params: GenerateParams,
                 on_token: TokenSink | None) -> Generation:
        stops = list(params.stop)
        if isinstance(prompt, str):  # raw completion: the client's own prompt, markers and all
            tokens = self._llm.tokenize(prompt.encode(), add_bos=True, special=True)
        else:
            tokens = self._tokens(self._format.parts(prompt))
            # Also under a grammar: a tool grammar's free-text branch has no end of its own,
            # and JSON strings may not hold the raw newline the transcript stops start with.
            stops += [s for s in self._format.stops if s not in stops]
        n_prompt = len(tokens)
        if n_prompt >= self._spec.context:
            raise BadRequest(f"the prompt is {n_prompt} tokens; model {self._spec.alias!r} has "
                             f"a context of {self._spec.context}", code="context_length_exceeded")
        pieces: list[str] = []
        finish = "length"
        for chunk in self._llm.create_completion(
                tokens, max_tokens=params.max_tokens, temperature=params.temperature,
                top_p=params.top_p, stop=stops or None, seed=params.seed, stream=True,
                grammar=self._grammar(params.grammar)):
            choice = chunk["choices"][0]
            piece = choice["text"]
            if piece:
                pieces.append(piece)
                if on_token is not None and not on_token(piece):
                    finish = "cancelled"
                    break
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
        return Generation(text="".join(pieces), finish_reason=finish, prompt_tokens=n_prompt,
                          completion_tokens=len(pieces))

    def _tokens(self, parts: Sequence[Part]) -> list[int]:
        """Only the template's markers become special tokens; message text stays text."""
        tokens: list[int] = self._llm.tokenize(b"", add_bos=True, special=False)
        for text, marker in parts:
            if text:
                tokens += self._llm.tokenize(text.encode(), add_bos=False, special=marker)
        return tokens

    def _grammar(self, gbnf: str | None) -> Any:
        if gbnf is None:
            return None
        grammar = self._grammars.get(gbnf)
        if grammar is None:
            from llama_cpp.llama_grammar import LlamaGrammar
            self._check_grammar(gbnf)
            grammar = LlamaGrammar.from_string(gbnf, verbose=False)
            self._grammars[gbnf] = grammar
        return grammar

    def _check_grammar(self, gbnf: str) -> None:
        """llama-cpp-python hands a grammar that does not parse to the sampler chain as a
        NULL pointer, and the process segfaults; parse it here first."""
        import llama_cpp
        sampler = llama_cpp.llama_sampler_init_grammar(
            self._llm._model.vocab, gbnf.encode(), b"root")
        if not sampler:
            raise BadRequest("grammar: not a valid GBNF grammar (llama.cpp could not parse "
                             "it; the daemon log has its message)", code="invalid_grammar")
        llama_cpp.llama_sampler_free(sampler)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self._emb is None:
            raise BadRequest(f"model {self._spec.alias!r} has no embeddings (set models."
                             f"{self._spec.alias}.embedding = true)", code="no_embeddings")
        vectors = self._emb.embed(list(texts), normalize=True)
        return [list(map(float, v)) for v in vectors]

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the embedding context reads for ``texts`` (as llama-cpp's ``embed`` does)."""
        ctx = self._emb or self._llm
        return sum(len(ctx.tokenize(t.encode(), add_bos=True, special=False)) for t in texts)

    def classify(self, texts: Sequence[str]) -> list[list[float]]:
        raise BadRequest(f"model {self._spec.alias!r} is a generative model, not a classifier",
                         code="not_a_classifier")

    def close(self) -> None:
        for ctx in (self._emb, self._llm):
            if ctx is not None:
                ctx.close()
        self._emb = None
        self._grammars.clear()
