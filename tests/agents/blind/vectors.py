"""Unit vectors from the bundled encoder of a real daemon, for the calibration scripts in
scripts/bench/ (safety_calibrate.py, scope_calibrate.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt

from tests.agents.conftest import MINILM, agents_config
from tests.edgedtest import deep_merge, short_tmpdir, start_daemon

Encode = Callable[[list[str]], npt.NDArray[np.float32]]


@contextmanager
def encoder() -> Iterator[Encode]:
    """A daemon serving the bundled encoder, and a function from texts to unit vectors."""
    tmp = short_tmpdir()
    config = deep_merge(agents_config(tmp / "st", model=False), {"models": {"minilm": MINILM}})
    daemon = start_daemon(config, state_dir=tmp / "st")

    def encode(texts: list[str]) -> npt.NDArray[np.float32]:
        rows: list[list[float]] = []
        for i in range(0, len(texts), 32):
            body = daemon.client.post("/v1/embeddings", {"model": "minilm",
                                                          "input": texts[i:i + 32]})
            rows.extend(r["embedding"] for r in body["data"])
        m = np.asarray(rows, dtype=np.float32)
        unit: npt.NDArray[np.float32] = m / np.linalg.norm(m, axis=1, keepdims=True)
        return unit

    try:
        yield encode
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)
