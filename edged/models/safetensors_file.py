"""The safetensors format, read with numpy: an 8-byte little-endian header length, a JSON
header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` (plus an optional
``__metadata__``), then the raw little-endian tensor bytes, offsets counted from the end of
the header. No torch and no ``safetensors`` package: numpy views of the bytes are enough.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edged.errors import IntegrityError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Array = npt.NDArray[Any]
    Floats = npt.NDArray[np.float32]

_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit
# dtype -> numpy dtype (little-endian); BF16 has none and is widened to float32 by hand.
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8",
           "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def _header(data: memoryview) -> tuple[dict[str, Any], int]:
    if len(data) < 8:
        raise IntegrityError("not a safetensors file: shorter than its header length")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_MAX_HEADER, len(data) - 8):
        raise IntegrityError(f"not a safetensors file: header of {size} bytes in a "
                             f"{len(data)}-byte file")
    try:
        header = json.loads(bytes(data[8:8 + size]))
    except ValueError as e:
        raise IntegrityError(f"safetensors header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise IntegrityError("safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + size


def _tensor(name: str, entry: Any, body: memoryview) -> Array:
    import numpy as np
    try:
        dtype, shape, (begin, end) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
        numpy_dtype = np.dtype(_DTYPES[dtype])
    except (KeyError, TypeError, ValueError):
        raise IntegrityError(f"safetensors tensor {name!r}: unsupported entry {entry!r}") from None
    if not 0 <= begin <= end <= len(body) or end - begin != math.prod(shape) * numpy_dtype.itemsize:
        raise IntegrityError(f"safetensors tensor {name!r}: bytes {begin}..{end} do not hold "
                             f"{dtype} {shape} in a {len(body)}-byte body")
    array = np.frombuffer(body[begin:end], dtype=numpy_dtype).reshape(shape)
    if dtype == "BF16":  # the top half of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


def read_tensors(data: bytes | memoryview) -> dict[str, Array]:
    """Every tensor of a safetensors file held in ``data``, as read-only numpy views of it
    (BF16 tensors as float32 copies). Raises ``IntegrityError`` for a malformed file."""
    view = memoryview(data)
    header, start = _header(view)
    body = view[start:]
    return {name: _tensor(name, entry, body) for name, entry in header.items()}


def float32(tensors: Mapping[str, Array], name: str) -> Floats:
    """One tensor as float32, naming it when it is missing."""
    import numpy as np
    try:
        return np.asarray(tensors[name], dtype=np.float32)
    except KeyError:
        raise IntegrityError(f"the weights have no tensor {name!r}") from None
