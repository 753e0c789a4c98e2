from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.edgedtest import (
    RunningDaemon,
    base_config,
    bundled_model,
    deep_merge,
    short_tmpdir,
    start_daemon,
)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = short_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def state_dir(short_tmp: Path) -> Path:
    return short_tmp / "st"


@pytest.fixture
def make_config(state_dir: Path) -> Callable[..., dict[str, Any]]:
    """``make_config({"budget": {"memory": "1GiB"}})``: the base test config, merged."""
    def make(extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return deep_merge(base_config(state_dir), extra or {})
    return make


@pytest.fixture
def edged(make_config: Callable[..., dict[str, Any]], state_dir: Path
          ) -> Iterator[Callable[..., RunningDaemon]]:
    """Start the real daemon: ``d = edged({"budget": {...}})``; stopped after the test."""
    started: list[RunningDaemon] = []

    def start(extra: dict[str, Any] | None = None, **kw: Any) -> RunningDaemon:
        d = start_daemon(make_config(extra), state_dir=state_dir, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()  # a no-op wait for one already stopped; also closes its notify socket


@pytest.fixture(scope="session")
def bundled_model_path() -> Path:
    """The bundled Gemma 3 270M GGUF, assembled once per machine under
    /tmp/edged-test-cache/models (set ``models.cache_dir`` to its parent to share it)."""
    return bundled_model()
