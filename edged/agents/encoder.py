"""Sentence vectors for understanding: routing, scope, safety and entity matching.

The vectors come from the model manager's encoder alias (all-MiniLM-L6-v2 by default,
served like any model, under the budget). Sets of example sentences (routing examples,
safety exemplars) are encoded once and kept on disk by content hash, so a restart does not
pay for them again; only the message of a turn is encoded per turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edged.errors import EdgedError
from edged.models.contract import Inference

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Matrix = npt.NDArray[np.float32]
else:
    Matrix = Any  # numpy is imported when vectors are first made (idle RSS: docs/performance.md)

log = logging.getLogger(__name__)
BATCH = 32


class Encoder:
    def __init__(self, models: Inference | None, alias: str | None, identity: str,
                 cache_dir: Path | None) -> None:
        self._models = models
        self.alias = alias
        self._identity = identity  # the alias and its weights' hash: vectors of one model
        self._cache_dir = cache_dir
        self.state = "off" if alias is None or models is None else "not loaded"

    @property
    def available(self) -> bool:
        return self.alias is not None and self._models is not None

    async def encode(self, texts: Sequence[str]) -> Matrix | None:
        """Unit vectors, one row per text; None when there is no encoder (words only)."""
        if not texts or not self.available or self._models is None or self.alias is None:
            return None
        try:
            rows: list[list[float]] = []
            for i in range(0, len(texts), BATCH):
                rows.extend(await self._models.embed(self.alias, list(texts[i:i + BATCH])))
        except EdgedError as e:
            log.warning("encoder %s: %s; understanding falls back to words", self.alias,
                        e.message)
            self.state = f"unavailable: {e.message}"
            return None
        import numpy as np

        self.state = "ready"
        return _unit(np.asarray(rows, dtype=np.float32))

    async def encode_set(self, texts: Sequence[str]) -> Matrix | None:
        """Like ``encode``, for a fixed set of sentences: read from the disk cache when this
        model has encoded exactly these texts before."""
        path = self._cache_path(texts)
        if path is not None:
            cached = await asyncio.to_thread(_load, path, len(texts))
            if cached is not None:
                return cached
        vectors = await self.encode(texts)
        if vectors is not None and path is not None:
            await asyncio.to_thread(_save, path, vectors)
        return vectors

    def _cache_path(self, texts: Sequence[str]) -> Path | None:
        if self._cache_dir is None or not self.available:
            return None
        digest = hashlib.sha256(self._identity.encode())
        for t in texts:
            digest.update(b"\0" + t.encode())
        return self._cache_dir / f"{digest.hexdigest()[:32]}.npy"


def _unit(rows: Matrix) -> Matrix:
    import numpy as np

    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def _load(path: Path, count: int) -> Matrix | None:
    import numpy as np

    try:
        found = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # absent or damaged: encode again
    if found.ndim != 2 or found.shape[0] != count or found.dtype != np.float32:
        return None
    vectors: Matrix = found
    return vectors


def _save(path: Path, vectors: Matrix) -> None:
    """Temp file + rename: a crash leaves the old file or none, never half a matrix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    import numpy as np

    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.save(f, vectors, allow_pickle=False)
    os.replace(tmp, path)


_CLAUSE = re.compile(r"(?<!\bdr\.)(?<!\bmr\.)(?<!\bms\.)(?<!\bmrs\.)(?<!\bst\.)(?<=[.!?;])\s+"
                     r"|\n+|\s+(?:but|also|and also|plus|btw|oh and)\s+"
                     r"|,?\s+and\s+(?=(?:what|whats|what's|how|when|where|who|do|does|is|are|"
                     r"can|could|will|would|also|please|i need|i want|i'd)\b)", re.I)


def clauses(text: str) -> list[str]:
    """The message and its sentences or clauses, each judged on its own: an emergency said
    in the middle of a booking must not be averaged away by the rest of the message."""
    parts = [p.strip(" ,") for p in _CLAUSE.split(text) if p and len(p.strip(" ,")) > 2]
    return [text, *parts] if len(parts) > 1 else [text]
