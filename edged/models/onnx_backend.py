"""ONNX text models (embeddings, classifiers) on onnxruntime, under the same manager and
budget as the GGUF models.

``onnxruntime`` is imported on the first load only: it maps a large native library, and a
box that serves only GGUF models should not pay for it.

Estimate: the initializer (weight) bytes, read by walking the ONNX protobuf's wire format
(ModelProto.graph.initializer: dims x element size) over an mmap of the file, plus an
allowance for onnxruntime itself and activations. Why not the ``onnx`` package (a runtime
dependency, for building packaged encoders): parsing a model into protobuf objects for one
sum costs the model's size in memory, and onnxruntime cannot report initializer sizes
without materialising the session, which is the cost we want to know beforehand. The walk
also rejects a truncated or non-ONNX file before any load. A packaged encoder not built
yet is described by its weights' size (``prime``).

Text -> tensors follows one of two contracts, picked from the graph's inputs
(docs/models.md, "ONNX text models"):
- ``input_ids`` (int64 [batch, seq], with optional ``attention_mask`` and
  ``token_type_ids``): BERT WordPiece over ``<stem>.vocab.txt`` or ``vocab.txt`` next to
  the model; a rank-3 output is mean-pooled over the attention mask.
- one float input [batch, D]: hashed features, word unigrams and character trigrams,
  ``crc32(feature) mod D``, counted and L2-normalised.
"""

from __future__ import annotations

import logging
import math
import mmap
import re
import unicodedata
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edged.errors import BadRequest, IntegrityError
from edged.models.backend import TokenSink
from edged.models.config import ModelSpec
from edged.models.contract import GenerateParams, Generation

if TYPE_CHECKING:  # numpy is imported where it is used: an idle daemon never pays for it
    import numpy as np
    import numpy.typing as npt

    Floats = npt.NDArray[np.float32]

log = logging.getLogger(__name__)

MiB = 1 << 20
# onnxruntime itself, a session's thread pool and per-run activations (no arena, so they
# are freed after each run). Measured here (PSS): the first session in a process costs
# ~29 MiB with tiny weights (the library is mapped then, and stays), later sessions add
# their weights plus 0-20 MiB, and close() + malloc_trim returns the weights.
BASE_ALLOWANCE = 32 * MiB
ACTIVATION_SHARE = 0.1  # of the weights: activations scale with the hidden size
BATCH = 16  # texts per run: bounds activation memory (attention is batch x seq^2)

# TensorProto.DataType -> bytes per element (4-bit types round up; strings use their length).
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8,
                  14: 8, 15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1}


# -- estimate: a protobuf wire walk -------------------------------------------------------

class _Malformed(Exception):
    pass


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end and shift < 70:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise _Malformed("a varint runs past its message")


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) of one message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
            continue
        if wire == 2:
            size, pos = _varint(buf, pos, end)
            start_of_payload, pos = pos, pos + size
        elif wire in (1, 5):
            start_of_payload, pos = pos, pos + (8 if wire == 1 else 4)
        else:
            raise _Malformed(f"wire type {wire} in field {number}")
        if pos > end:
            raise _Malformed(f"field {number} runs past the end")
        yield number, wire, start_of_payload, pos


def _tensor_bytes(buf: Any, start: int, end: int) -> int:
    dims: list[int] = []
    dtype = 0
    for number, wire, a, b in _fields(buf, start, end):
        if number == 1 and wire == 0:
            dims.append(a)
        elif number == 1 and wire == 2:  # packed dims
            while a < b:
                dim, a = _varint(buf, a, b)
                dims.append(dim)
        elif number == 2 and wire == 0:
            dtype = a
    size = _ELEMENT_BYTES.get(dtype)
    return math.prod(dims) * size if size else end - start


def initializer_bytes(path: Path) -> int:
    """Sum of the graph's initializer sizes (weights stored inline or as external data).
    Raises ``IntegrityError`` for a file that is not a whole ONNX model."""
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            graphs = [(a, b) for n, w, a, b in _fields(buf, 0, len(buf)) if n == 7 and w == 2]
            if not graphs:
                raise _Malformed("no graph")
            return sum(_tensor_bytes(buf, a, b) for start, end in graphs
                       for n, w, a, b in _fields(buf, start, end) if n == 5 and w == 2)
    except (_Malformed, ValueError) as e:  # ValueError: mmap of an empty file
        raise IntegrityError(f"{path.name} is not a whole ONNX model ({e}); "
                             "the file is corrupt, truncated or of another format") from None


# -- text -> tensors -----------------------------------------------------------------------

def hashed_features(text: str, dim: int) -> Floats:
    """The hashed-features contract: NFKC, lowercase, words = runs of ``\\w``; features
    ``"w:" + word`` and ``"c:" + trigram`` of ``" " + word + " "``; each adds 1 at
    ``crc32(utf8(feature)) % dim``; the vector is L2-normalised (all zeros stays zeros)."""
    import numpy as np
    vec = np.zeros(dim, dtype=np.float32)
    for word in re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower()):
        padded = f" {word} "
        for feature in [f"w:{word}"] + [f"c:{padded[i:i + 3]}" for i in range(len(padded) - 2)]:
            vec[zlib.crc32(feature.encode()) % dim] += 1.0
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm else vec


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    ascii_punct = 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
    return ascii_punct or unicodedata.category(ch).startswith("P")


# The CJK Unified Ideographs blocks BERT isolates as words of their own (Hugging Face's
# ``BertNormalizer`` list; other CJK scripts, kana and hangul, are split like any letters).
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(low <= cp <= high for low, high in _CJK)


def _clean(ch: str) -> str:
    """BERT's text cleaning of one character, as Hugging Face's: NUL, U+FFFD, control,
    format and private-use characters go (unassigned ones stay); whitespace becomes a space."""
    if ch in "\t\n\r":
        return " "
    if ch in "\x00\ufffd" or unicodedata.category(ch) in ("Cc", "Cf", "Co"):
        return ""
    return " " if ch.isspace() else ch


def _has_ascii_upper(token: str) -> bool:
    return any("A" <= ch <= "Z" for ch in token)


class WordPiece:
    """BERT's tokenizer: basic split (whitespace, punctuation, CJK characters; lowercase and
    accent stripping for uncased vocabularies), then greedy longest-match WordPiece with
    ``##`` continuations. Uncased = no entry but the bracketed specials (``[MASK]``...)
    has an upper-case ASCII letter."""

    SPECIALS = ("[CLS]", "[SEP]", "[UNK]", "[PAD]")

    def __init__(self, vocab: dict[str, int]) -> None:
        missing = [s for s in self.SPECIALS if s not in vocab]
        if missing:
            raise BadRequest(f"the vocabulary lacks {', '.join(missing)}: only WordPiece "
                             "(BERT-style) vocabularies are supported", code="unsupported_model")
        self.vocab = vocab
        self.lowercase = not any(_has_ascii_upper(t) for t in vocab
                                 if not (t.startswith("[") and t.endswith("]")))
        self.cls, self.sep = vocab["[CLS]"], vocab["[SEP]"]
        self.unk, self.pad = vocab["[UNK]"], vocab["[PAD]"]

    @classmethod
    def from_file(cls, path: Path) -> WordPiece:
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls({token: i for i, token in enumerate(lines) if token})

    def basic(self, text: str) -> list[str]:
        text = "".join(map(_clean, text))
        if self.lowercase:  # as Hugging Face's: accents off first, then per-character
            # lowercase (so no final-sigma rule: a word-final capital sigma stays U+03C3)
            text = "".join(ch.lower() for ch in unicodedata.normalize("NFD", text)
                           if unicodedata.category(ch) != "Mn")
        words: list[str] = []
        for chunk in text.split():
            words.extend(self._split_punct(chunk))
        return words

    @staticmethod
    def _split_punct(chunk: str) -> list[str]:
        out: list[str] = []
        current = ""
        for ch in chunk:
            if _is_punct(ch) or _is_cjk(ch):
                out.extend([current, ch] if current else [ch])
                current = ""
            else:
                current += ch
        return [*out, current] if current else out

    def word_ids(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:  # no piece matches: the whole word is unknown
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str, max_len: int) -> list[int]:
        """``[CLS] pieces [SEP]``, cut to ``max_len`` ids."""
        ids = [i for word in self.basic(text) for i in self.word_ids(word)]
        return [self.cls, *ids[:max(0, max_len - 2)], self.sep]


# -- the backend ----------------------------------------------------------------------------

def _sidecar(model: Path, name: str) -> Path | None:
    """``<stem>.<name>`` next to the model, else ``<name>`` in its folder."""
    for candidate in (model.with_name(f"{model.stem}.{name}"), model.with_name(name)):
        if candidate.is_file():
            return candidate
    return None


def _l2(rows: Floats) -> Floats:
    import numpy as np
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def _probabilities(rows: Floats) -> Floats:
    """A graph ending in Softmax already gives probabilities; anything else is logits."""
    import numpy as np
    if np.all(rows >= 0) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        return rows
    shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
    probs: Floats = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


class _Session(Protocol):
    def run(self, outputs: list[str] | None, feeds: dict[str, Any]) -> list[Any]: ...

    def get_session_options(self) -> Any: ...


@dataclass(frozen=True)
class _Io:
    feeds: tuple[str, ...]  # input names
    output: str
    hashed_dim: int | None  # hashed-features contract when set
    static_seq: int | None  # a graph built for one sequence length


class OnnxModel:
    """A loaded ONNX text model. Its methods block; the manager calls them on the model's
    own worker thread."""

    def __init__(self, spec: ModelSpec, session: _Session, io: _Io,
                 tokenizer: WordPiece | None, labels: tuple[str, ...]) -> None:
        self.spec = spec
        self.labels = labels  # class names from ``labels.txt``, when the model has one
        self._session: _Session | None = session
        self._io = io
        self._tokenizer = tokenizer
        self._run_errors: tuple[type[BaseException], ...] = _ort_errors()

    def generate(self, prompt: str | Sequence[dict[str, Any]], params: GenerateParams,
                 on_token: TokenSink | None) -> Generation:
        raise BadRequest(f"model {self.spec.alias!r} is an ONNX {self.spec.kind} model: it "
                         "serves embeddings or classification, not chat or completions",
                         code="unsupported_model_operation")

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.spec.kind == "classifier":
            raise BadRequest(f"model {self.spec.alias!r} is a classifier: use classify",
                             code="unsupported_model_operation")
        return _l2(self._outputs(texts)).tolist()  # type: ignore[no-any-return]

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the graph reads for ``texts``; a hashed-features graph reads words."""
        if self._tokenizer is None:
            return sum(len(t.split()) for t in texts)
        limit = self._io.static_seq or self.spec.context
        return sum(len(self._tokenizer.encode(t, limit)) for t in texts)

    def classify(self, texts: Sequence[str]) -> list[list[float]]:
        if self.spec.kind != "classifier":
            raise BadRequest(f"model {self.spec.alias!r} is not a classifier (kind = "
                             f"{self.spec.kind!r})", code="unsupported_model_operation")
        return _probabilities(self._outputs(texts)).tolist()  # type: ignore[no-any-return]

    @property
    def session_options(self) -> Any:
        """The onnxruntime ``SessionOptions`` in force (threads, arena), for ps and tests."""
        return None if self._session is None else self._session.get_session_options()

    def close(self) -> None:
        self._session = None  # drops the last reference: onnxruntime frees the session

    def _outputs(self, texts: Sequence[str]) -> Floats:
        import numpy as np
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        chunks = [self._run(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)]
        return np.concatenate(chunks)

    def _run(self, texts: Sequence[str]) -> Floats:
        import numpy as np
        if self._session is None:
            raise BadRequest(f"model {self.spec.alias!r} is unloaded", code="unavailable")
        feeds, mask = self._feeds(texts)
        try:
            out = np.asarray(self._session.run([self._io.output], feeds)[0], dtype=np.float32)
        except self._run_errors as e:
            raise BadRequest(f"model {self.spec.alias!r} failed on this input: {e}",
                             code="model_error") from None
        if out.ndim == 3:  # token vectors: mean over the real (unpadded) tokens
            weights = mask[:, :, None].astype(np.float32)
            out = (out * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        if out.ndim != 2:
            raise BadRequest(f"model {self.spec.alias!r}: output {self._io.output!r} has "
                             f"shape {out.shape}, expected [batch, n]", code="model_error")
        return out

    def _feeds(self, texts: Sequence[str]) -> tuple[dict[str, Any], npt.NDArray[np.int64]]:
        import numpy as np
        io = self._io
        if io.hashed_dim is not None:
            rows = np.stack([hashed_features(t, io.hashed_dim) for t in texts])
            return {io.feeds[0]: rows}, np.ones((len(texts), 1), dtype=np.int64)
        assert self._tokenizer is not None
        limit = io.static_seq or self.spec.context
        ids = [self._tokenizer.encode(t, limit) for t in texts]
        width = io.static_seq or max(map(len, ids))
        tokens = np.full((len(ids), width), self._tokenizer.pad, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            tokens[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        named = {"input_ids": tokens, "attention_mask": mask,
                 "token_type_ids": np.zeros_like(tokens)}
        return {name: named[name] for name in io.feeds}, mask


def _ort_errors() -> tuple[type[BaseException], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile",
             "NotImplemented", "RuntimeException")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


class OnnxBackend:
    """``Backend`` for ``format = "onnx"`` models of kind ``embedding`` or ``classifier``."""

    format = "onnx"

    def __init__(self) -> None:
        self._primed: dict[Path, int] = {}  # graph not built yet -> its weights' bytes

    def prime(self, path: Path, source: Path, size: int) -> None:
        """Describe ``path``, a packaged encoder's graph not built yet, by its weights (the
        graph holds them all, as float32 like the safetensors)."""
        self._primed[path] = size

    def estimate(self, spec: ModelSpec, path: Path, threads: int) -> int:
        primed = self._primed.get(path)
        weights = primed if primed is not None and not path.exists() else initializer_bytes(path)
        return weights + BASE_ALLOWANCE + int(weights * ACTIVATION_SHARE)

    def load(self, spec: ModelSpec, path: Path, threads: int) -> OnnxModel:
        if spec.kind not in ("embedding", "classifier"):
            raise BadRequest(f"models.{spec.alias}.kind: an ONNX model is 'embedding' or "
                             f"'classifier', not {spec.kind!r}", code="unsupported_model")
        initializer_bytes(path)  # a clear error for a corrupt file, before onnxruntime's
        session = self._session(spec, path, threads)
        io = self._io(spec, session)
        tokenizer = None if io.hashed_dim is not None else self._tokenizer(spec, path)
        labels_file = _sidecar(path, "labels.txt")
        labels = tuple(labels_file.read_text(encoding="utf-8").splitlines()) if labels_file \
            else ()
        log.info("loaded ONNX %s %r (%d threads, inputs %s)", spec.kind, spec.alias, threads,
                 ", ".join(io.feeds))
        return OnnxModel(spec, session, io, tokenizer, labels)

    @staticmethod
    def _session(spec: ModelSpec, path: Path, threads: int) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # Low memory: no CPU arena (it keeps peak activations forever), no memory pattern
        # (it pre-plans buffers per input shape), no prepacking (a second copy of weights).
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        opts.add_session_config_entry("session.disable_prepacking", "1")
        # Threads come from the power profile; spinning idle threads burn battery.
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            return ort.InferenceSession(str(path), sess_options=opts,
                                        providers=["CPUExecutionProvider"])
        except _ort_errors() as e:
            raise IntegrityError(f"model {spec.alias!r}: onnxruntime cannot load "
                                 f"{path.name}: {e}") from None

    @staticmethod
    def _io(spec: ModelSpec, session: Any) -> _Io:
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        output = "sentence_embedding" if "sentence_embedding" in outputs else outputs[0]
        if "input_ids" in inputs:
            unknown = set(inputs) - {"input_ids", "attention_mask", "token_type_ids"}
            if not unknown:
                seq = inputs["input_ids"].shape[-1]
                return _Io(tuple(inputs), output, None, seq if isinstance(seq, int) else None)
        elif len(inputs) == 1:
            only = next(iter(inputs.values()))
            dim = only.shape[-1] if len(only.shape) == 2 else None
            if only.type == "tensor(float)" and isinstance(dim, int) and dim > 0:
                return _Io((only.name,), output, dim, None)
        shapes = ", ".join(f"{i.name}: {i.type} {i.shape}" for i in inputs.values())
        raise BadRequest(f"model {spec.alias!r}: inputs ({shapes}) match no ONNX text "
                         "contract (see docs/models.md)", code="unsupported_model")

    @staticmethod
    def _tokenizer(spec: ModelSpec, path: Path) -> WordPiece:
        vocab = _sidecar(path, "vocab.txt")
        if vocab is None:
            raise BadRequest(f"model {spec.alias!r} takes input_ids but has no vocabulary: "
                             f"put {path.stem}.vocab.txt or vocab.txt next to {path.name}",
                             code="unsupported_model")
        return WordPiece.from_file(vocab)
