"""Read a GGUF header without loading the model, and estimate what a load costs.

``gguf.GGUFReader`` parses every key eagerly, including the 262k-entry tokenizer arrays of
a Gemma vocabulary (about 9 s on a small box), so this walks the header itself and skips
arrays it does not need; the quantization block sizes come from the ``gguf`` package
(imported only when a header is read) so they stay in step with the format.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.errors import IntegrityError

GGUF_MAGIC = b"GGUF"
# GGUF value types (gguf.constants.GGUFValueType; the numbering is part of the file format).
# Kept here so reading a header does not import gguf (and numpy) into an idle daemon.
_STRING, _ARRAY = 8, 9
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
                            7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
# llama.cpp's compute buffer: activations for one micro-batch plus the output logits row.
# Measured on Gemma 3 270M (n_ubatch 512): ~60 MiB; scale with width and vocabulary.
_COMPUTE_FLOOR = 32 * 1024 * 1024
# Tensor types llama.cpp 0.3.36's CPU backend can repack (ggml-cpu/repack.cpp: Q4_0, Q8_0,
# Q2_K, Q4_K, Q5_K, Q6_K, IQ4_NL, MXFP4; GGML type numbers, part of the file format); the
# token embeddings are looked up by row, never repacked.
REPACKED_TYPES = frozenset({2, 8, 10, 12, 13, 14, 20, 39})
EMBEDDINGS = "token_embd.weight"
# Architectures whose layers mix sliding-window and full attention, as llama.cpp 0.3.36
# lays them out when the file does not say (src/models/*.cpp, load_swa_pattern): every
# n-th layer is full (the first of each n when dense-first, else the last), and the window
# when the file has no sliding_window key (0: no sliding window without one). Others are
# counted as full attention everywhere, which overstates, never understates, their cache.
SWA_PATTERNS: dict[str, tuple[int, bool, int]] = {
    "gemma2": (2, False, 4096), "gemma3": (6, False, 0), "cohere2": (4, False, 0)}


@dataclass(frozen=True)
class GgufInfo:
    architecture: str
    n_layer: int
    n_embd: int
    n_head_kv: int
    key_length: int
    value_length: int
    n_vocab: int
    context_length: int
    weights_bytes: int  # sum of tensor data
    file_bytes: int
    # Matrices llama.cpp may copy into its CPU kernels' repacked layout at load: private to
    # each context, not shared with other mappings of the file (an upper bound: which of
    # them are repacked depends on the CPU and on each matrix's shape).
    repacked_bytes: int = 0
    # Sliding-window attention: how many layers attend to the last ``sliding_window``
    # positions only (their KV cache is sized by the window, not the context).
    swa_layers: int = 0
    sliding_window: int = 0


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise IntegrityError(f"{self.path}: GGUF header is truncated at byte {self.pos}",
                                 code="corrupt_model")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise IntegrityError(f"{self.path}: GGUF string runs past the end of the file",
                                 code="corrupt_model")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array(keep)
        if vtype not in _SCALARS:
            raise IntegrityError(f"{self.path}: unknown GGUF value type {vtype} at byte "
                                 f"{self.pos}", code="corrupt_model")
        return self.take(_SCALARS[vtype])

    def array(self, keep: bool) -> Any:
        etype = self.take("<I")
        count = self.take("<Q")
        if not keep:
            # Only the length matters (vocabulary size); skip the items.
            for _ in range(count):
                self.value(etype, False)
            return count
        return [self.value(etype, True) for _ in range(count)]


def read_gguf(path: Path, size: int | None = None) -> GgufInfo:
    """Blocking: parse the header and tensor table; raise ``IntegrityError`` if the file is
    not a GGUF model or is shorter than its tensor table says. ``size``: the whole file's,
    when ``path`` is only its first chunk."""
    with path.open("rb") as f:
        size = path.stat().st_size if size is None else size
        if size < 24:
            raise IntegrityError(f"{path}: not a GGUF model (only {size} bytes)",
                                 code="corrupt_model")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(_Cursor(buf, path), size)


def _parse(cur: _Cursor, size: int) -> GgufInfo:
    if bytes(cur.buf[:4]) != GGUF_MAGIC:
        raise IntegrityError(f"{cur.path}: not a GGUF model (bad magic)", code="corrupt_model")
    cur.pos = 4
    cur.take("<I")  # version
    n_tensors = cur.take("<Q")
    n_kv = cur.take("<Q")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.take("<I"), keep=not key.startswith("tokenizer."))
    weights, repacked, end = _tensors(cur, n_tensors, int(meta.get("general.alignment", 32)))
    if end > size:
        raise IntegrityError(f"{cur.path}: truncated GGUF: tensors need {end} bytes, the file "
                             f"has {size}", code="corrupt_model")
    return _info(meta, weights, repacked, size)


def _tensors(cur: _Cursor, n_tensors: int, alignment: int) -> tuple[int, int, int]:
    """(bytes of all tensor data, bytes that may be repacked, where the data ends)."""
    weights = repacked = 0
    last_end = 0
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.take("<Q") for _ in range(cur.take("<I"))]
        qtype = cur.take("<I")
        offset = cur.take("<Q")
        nbytes = _tensor_bytes(dims, qtype, cur.path)
        weights += nbytes
        if qtype in REPACKED_TYPES and len(dims) >= 2 and name != EMBEDDINGS:
            repacked += nbytes
        last_end = max(last_end, offset + nbytes)
    data_start = -(-cur.pos // alignment) * alignment
    return weights, repacked, data_start + last_end


def _tensor_bytes(dims: list[int], qtype: int, path: Path) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
        raise IntegrityError(f"{path}: unknown tensor type {qtype}", code="corrupt_model") from None
    n = 1
    for d in dims:
        n *= d
    return n // block * type_size


def _info(meta: dict[str, Any], weights: int, repacked: int, size: int) -> GgufInfo:
    arch = str(meta.get("general.architecture", "llama"))

    def num(key: str, default: int) -> int:
        value = meta.get(f"{arch}.{key}", default)
        return int(value[0] if isinstance(value, list) and value else value or default)

    n_embd = num("embedding_length", 4096)
    n_head = num("attention.head_count", 32)
    head_dim = n_embd // max(n_head, 1)
    return GgufInfo(
        architecture=arch,
        n_layer=num("block_count", 32),
        n_embd=n_embd,
        n_head_kv=num("attention.head_count_kv", n_head),
        key_length=num("attention.key_length", head_dim),
        value_length=num("attention.value_length", head_dim),
        n_vocab=int(meta.get("tokenizer.ggml.tokens", 32000)),
        context_length=num("context_length", 2048),
        weights_bytes=weights,
        file_bytes=size,
        repacked_bytes=repacked,
        **_sliding_window(arch, meta, num("block_count", 32)),
    )


def _sliding_window(arch: str, meta: dict[str, Any], n_layer: int) -> dict[str, int]:
    known = SWA_PATTERNS.get(arch)
    if known is None:
        return {}
    n_pattern, dense_first, default_window = known
    window = int(meta.get(f"{arch}.attention.sliding_window", default_window) or 0)
    if window <= 0:
        return {}
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):  # the file says, layer by layer
        swa = sum(1 for flag in pattern[:n_layer] if flag)
    else:
        if pattern is not None:
            n_pattern = int(pattern)
        swa = sum(1 for il in range(n_layer) if n_pattern == 0 or (
            il % n_pattern != 0 if dense_first else il % n_pattern < n_pattern - 1))
    return {"swa_layers": swa, "sliding_window": window}


def kv_cache_bytes(info: GgufInfo, n_ctx: int, n_seq: int = 1, n_ubatch: int = 512,
                   bytes_per: int = 2) -> int:
    """K and V at ``n_ctx`` positions for every full-attention layer (f16 by default), and
    for every sliding-window layer the cells of its window cache (``window_cells``)."""
    kv_width = info.n_head_kv * (info.key_length + info.value_length)
    cells = n_ctx * (info.n_layer - info.swa_layers) \
        + window_cells(info, n_ctx, n_seq, n_ubatch) * info.swa_layers
    return cells * kv_width * bytes_per


def window_cells(info: GgufInfo, n_ctx: int, n_seq: int, n_ubatch: int) -> int:
    """The cells llama.cpp gives a sliding-window layer's cache: the window for each of
    ``n_seq`` sequences (one unified cache) plus a micro-batch, padded to 256, at most
    ``n_ctx``. Without a sliding window, ``n_ctx``."""
    if not info.swa_layers:
        return n_ctx
    return min(n_ctx, -(-(info.sliding_window * n_seq + n_ubatch) // 256) * 256)


def compute_bytes(info: GgufInfo, n_ubatch: int = 512, n_ctx: int = 0, window: int = 0) -> int:
    """Scratch for one micro-batch: activations, one row of logits per sequence, and the
    attention masks (f16, a micro-batch's rows over every cell of the full-attention cache
    and of the window cache), reserved at their worst case."""
    activations = n_ubatch * info.n_embd * 4 * 8
    logits = info.n_vocab * 4 * 8
    masks = n_ubatch * (n_ctx + (window if info.swa_layers else 0)) * 2
    return _COMPUTE_FLOOR + activations + logits + masks


def context_bytes(info: GgufInfo, n_ctx: int, n_seq: int = 1, n_ubatch: int = 512) -> int:
    """What one context of ``n_seq`` sequences adds on top of the (shared, mmapped)
    weights."""
    return kv_cache_bytes(info, n_ctx, n_seq, n_ubatch) + compute_bytes(
        info, n_ubatch, n_ctx, window_cells(info, n_ctx, n_seq, n_ubatch))
