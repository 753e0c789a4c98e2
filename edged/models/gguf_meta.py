"""Read a GGUF header without loading the model, and estimate what a load costs.

``gguf.GGUFReader`` parses every key eagerly, including the 262k-entry tokenizer arrays of
a Gemma vocabulary (about 9 s on a small box), so this walks the header itself and skips
arrays it does not need; the quantization block sizes come from the ``gguf`` package
(imported only when a header is read) so they stay in step with the format.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, replace
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
    return replace(_info(meta, weights, size), repacked_bytes=repacked)


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


def _info(meta: dict[str, Any], weights: int, size: int) -> GgufInfo:
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
    )


def kv_cache_bytes(info: GgufInfo, n_ctx: int, bytes_per: int = 2) -> int:
    """K and V for every layer at ``n_ctx`` positions (f16 by default)."""
    kv_width = info.n_head_kv * (info.key_length + info.value_length)
    return n_ctx * info.n_layer * kv_width * bytes_per


def compute_bytes(info: GgufInfo, n_ubatch: int = 512) -> int:
    """Scratch for one micro-batch: activations and one row of logits per sequence."""
    activations = n_ubatch * info.n_embd * 4 * 8
    logits = info.n_vocab * 4 * 8
    return _COMPUTE_FLOOR + activations + logits


def context_bytes(info: GgufInfo, n_ctx: int) -> int:
    """What one context adds on top of the (shared, mmapped) weights."""
    return kv_cache_bytes(info, n_ctx) + compute_bytes(info)
