"""One model and a one-sequence context through llama.cpp's C API, as the scheduler builds
its own (with n_seq_max 1): a prompt decoded, then a token at a time. The sampling tests
read its logits; the benchmarks use it as the raw reference."""

from __future__ import annotations

from pathlib import Path


class OneSequence:
    def __init__(self, path: Path, *, n_ctx: int = 256, threads: int = 1,
                 n_batch: int = 256) -> None:
        import llama_cpp
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's load log, as Llama(verbose=False) does
        self.c = llama_cpp
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(
            str(path).encode(), llama_cpp.llama_model_default_params())
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.pos = 0

    def tokenize(self, text: str) -> list[int]:
        buf = (self.c.llama_token * 1024)()
        data = text.encode()
        n = self.c.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, True)
        return list(buf[:n])

    def prefill(self, tokens: list[int]) -> None:
        """A new prompt: the context emptied, then ``tokens`` decoded."""
        self.c.llama_memory_clear(self.mem, True)
        self.pos = 0
        self.decode(tokens)

    def decode(self, tokens: list[int]) -> None:
        """``tokens`` after what is decoded; the logits of the last one are row -1."""
        b = self.batch
        for j, tok in enumerate(tokens):
            b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, self.pos + j, 1, 0
            b.seq_id[j][0] = 0
        b.logits[len(tokens) - 1] = 1
        b.n_tokens = len(tokens)
        if self.c.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        self.pos += len(tokens)

    def close(self) -> None:
        self.c.llama_batch_free(self.batch)
        self.c.llama_free(self.ctx)
        self.c.llama_model_free(self.model)
