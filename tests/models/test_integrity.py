"""Bad model files are refused with a clear error and the daemon stays up; idle models
unload on their own."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.client import ApiError
from tests.edgedtest import (
    MODEL_CACHE,
    RunningDaemon,
    base_config,
    bundled_alias,
    deep_merge,
    running,
    short_tmpdir,
)

WRONG_SHA = "0" * 64


@pytest.fixture(scope="module")
def files() -> Iterator[Path]:
    folder = short_tmpdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(bundled_model_path: Path, files: Path) -> Iterator[RunningDaemon]:
    with bundled_model_path.open("rb") as f:
        head = f.read(16 * 1024 * 1024)  # the header (a 262k-token vocabulary) and a bit
    (files / "truncated.gguf").write_bytes(head)  # a real header, most tensors missing
    (files / "garbage.gguf").write_bytes(os.urandom(64 * 1024))
    (files / "swapped.gguf").write_bytes(head)
    state = files / "st"
    config = deep_merge(base_config(state), {
        "budget": {"idle_unload": "1s"},
        "models": {
            "cache_dir": str(MODEL_CACHE),
            "g": bundled_alias(),
            "wrongsha": {"path": str(bundled_model_path), "sha256": WRONG_SHA},
            "truncated": {"path": str(files / "truncated.gguf")},
            "garbage": {"path": str(files / "garbage.gguf")},
            "swapped": {"path": str(files / "swapped.gguf"),
                        "sha256": hashlib.sha256(head).hexdigest()},
            "missing": {"path": str(files / "nothing-here.gguf")},
        }})
    with running(config, state) as d:
        yield d


def chat(d: RunningDaemon, alias: str) -> None:
    d.client.post("/v1/chat/completions", {
        "model": alias, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})


def refusal(d: RunningDaemon, alias: str) -> ApiError:
    with pytest.raises(ApiError) as e:
        chat(d, alias)
    assert d.client.get("/health")["status"] in ("ok", "degraded")  # still up
    return e.value


def test_sha_mismatch_is_refused(daemon: RunningDaemon, bundled_model_path: Path) -> None:
    err = refusal(daemon, "wrongsha")
    assert err.status == 422 and err.code == "sha256_mismatch"
    assert str(bundled_model_path) in err.message and WRONG_SHA in err.message


@pytest.mark.parametrize(("alias", "words"), [
    ("truncated", "truncated GGUF"), ("garbage", "not a GGUF model")])
def test_corrupt_files_give_a_clear_error(daemon: RunningDaemon, alias: str,
                                          words: str) -> None:
    err = refusal(daemon, alias)
    assert err.status == 422 and err.code == "corrupt_model"
    assert words in err.message and f"{alias}.gguf" in err.message


def test_missing_file_is_named(daemon: RunningDaemon) -> None:
    err = refusal(daemon, "missing")
    assert err.status == 404 and "nothing-here.gguf does not exist" in err.message


def test_a_changed_file_is_checked_again(daemon: RunningDaemon, files: Path) -> None:
    # First the sha matches and the (truncated) file fails on its header...
    assert refusal(daemon, "swapped").code == "corrupt_model"
    # ...then the file is replaced (new inode, new size): the sha is checked again.
    target = files / "swapped.gguf"
    tmp = files / "swapped.new"
    tmp.write_bytes(b"GGUF" + os.urandom(1000))
    tmp.replace(target)
    assert refusal(daemon, "swapped").code == "sha256_mismatch"


def test_the_daemon_still_serves_after_bad_files(daemon: RunningDaemon) -> None:
    chat(daemon, "g")
    assert [m["model"] for m in daemon.client.get("/admin/ps")["models"]] == ["g"]


def test_idle_models_unload_after_idle_unload(daemon: RunningDaemon) -> None:
    chat(daemon, "g")
    ps = daemon.client.get("/admin/ps")
    assert [m["model"] for m in ps["models"]] == ["g"]
    # Long-poll /admin/ps until the loaded set changes: the 1 s idle timer fires.
    while ps["models"]:
        ps = daemon.client.get(f"/admin/ps?generation={ps['generation']}&wait=30")
    assert ps["used_bytes"] == 0
    text = daemon.client.get("/metrics")
    assert 'edged_model_evictions_total{model="g",reason="idle"}' in text
