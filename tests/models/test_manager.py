"""The memory budget through the real daemon: eviction order, pinning, refusals.

Three aliases over the bundled file at context 4096 cost the shared weights (~235 MiB, once)
and llama.cpp's heap reserve (100 MiB, once) plus ~88 MiB each (KV cache, buffers and 13 MiB
of repacked weights, measured; the first load of each is charged its estimate, ~114 MiB with
23 MiB of weights that may be repacked), so in a 580 MiB budget two fit (~540 MiB while the
second loads) and three do not (~625 MiB). "huge" (8 sequences of 32768: 1.2 GiB of KV
cache and masks) never fits.
"""

from __future__ import annotations

import json
import re
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
    cli,
    deep_merge,
    running,
    short_tmpdir,
)

MiB = 1024 * 1024
ALIASES = ("a", "b", "c")


@pytest.fixture(scope="module")
def module_daemon(bundled_model_path: Path) -> Iterator[RunningDaemon]:
    tmp = short_tmpdir()
    state = tmp / "st"
    # One sequence each: the budget arithmetic below counts one KV cache per model (a
    # default `parallel` would size itself to the 580 MiB budget and change it).
    models = {alias: bundled_alias(context=4096, parallel=1) for alias in ALIASES}
    models["huge"] = bundled_alias(context=32768, parallel=8)
    config = deep_merge(base_config(state), {
        "budget": {"memory": "580MiB", "request_timeout": "2s"},
        "models": {"cache_dir": str(MODEL_CACHE), **models},
    })
    try:
        with running(config, state) as d:
            yield d
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def daemon(module_daemon: RunningDaemon) -> RunningDaemon:
    """The module's daemon with nothing loaded."""
    for alias in (*ALIASES, "huge"):
        module_daemon.client.post(f"/admin/models/{alias}/unload")
    assert module_daemon.client.get("/admin/ps")["models"] == []
    return module_daemon


def loaded(d: RunningDaemon) -> list[str]:
    ps = d.client.get("/admin/ps")
    assert ps["used_bytes"] <= ps["budget_bytes"]
    return sorted(m["model"] for m in ps["models"])


def chat(d: RunningDaemon, alias: str) -> None:
    d.client.post("/v1/chat/completions", {
        "model": alias, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})


def evictions(d: RunningDaemon, alias: str) -> float:
    text = d.client.get("/metrics")
    m = re.search(rf'edged_model_evictions_total{{model="{alias}",reason="evicted"}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def test_two_fit_and_the_third_evicts_the_least_recently_used(daemon: RunningDaemon) -> None:
    chat(daemon, "a")
    chat(daemon, "b")
    assert loaded(daemon) == ["a", "b"]
    before = evictions(daemon, "b")
    chat(daemon, "a")  # now b is the least recently used
    chat(daemon, "c")
    assert loaded(daemon) == ["a", "c"]
    assert evictions(daemon, "b") == before + 1
    chat(daemon, "b")  # and now a is
    assert loaded(daemon) == ["b", "c"]


def test_shared_weights_are_counted_once(daemon: RunningDaemon) -> None:
    chat(daemon, "a")
    one = daemon.client.get("/admin/ps")["used_bytes"]
    chat(daemon, "b")
    two = daemon.client.get("/admin/ps")["used_bytes"]
    # The second alias over the same file adds only its own context, not the weights again.
    assert 60 * MiB < two - one < 200 * MiB
    assert one > 300 * MiB


def test_pinned_models_are_not_evicted_and_the_refusal_says_why(daemon: RunningDaemon) -> None:
    daemon.client.post("/admin/models/a/load", {"pin": True})
    daemon.client.post("/admin/models/b/load", {"pin": True})
    with pytest.raises(ApiError) as e:
        chat(daemon, "c")  # waits for room up to the 2 s request timeout, then 503
    assert e.value.status == 503 and e.value.code == "over_budget"
    assert re.search(r"'c' needs \d+ MiB but only \d+ MiB of the 580 MiB budget is free",
                     e.value.message)
    assert "a (" in e.value.message and "pinned" in e.value.message
    assert loaded(daemon) == ["a", "b"]
    daemon.client.post("/admin/models/b/unload")  # unpins and frees room
    chat(daemon, "c")
    assert loaded(daemon) == ["a", "c"]
    assert daemon.client.get("/admin/ps")["models"][0]["pinned"] is True


def test_an_idle_unpinned_model_makes_room_at_once(daemon: RunningDaemon) -> None:
    daemon.client.post("/admin/models/a/load", {"pin": True})
    daemon.client.post("/admin/models/b/load")
    chat(daemon, "c")  # b is idle and unpinned: evicted without waiting
    assert loaded(daemon) == ["a", "c"]


def test_a_model_larger_than_the_whole_budget_fails_at_once(daemon: RunningDaemon) -> None:
    chat(daemon, "a")
    with pytest.raises(ApiError) as e:
        chat(daemon, "huge")
    assert e.value.status == 503 and e.value.code == "model_too_large"
    assert "more than the whole budget of 580 MiB" in e.value.message
    assert loaded(daemon) == ["a"]  # nothing was evicted for a hopeless load


def test_loads_evictions_and_refusals_are_audited(daemon: RunningDaemon) -> None:
    daemon.client.post("/admin/models/a/load", {"pin": True})
    daemon.client.post("/admin/models/b/load", {"pin": True})
    with pytest.raises(ApiError):
        chat(daemon, "huge")
    out = cli("audit", "export", "--json", "--config", str(daemon.config_path),
              "--kind", "model.load", "--kind", "model.unload", "--kind", "model.refused",
              socket_path=daemon.socket)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    kinds = {(e["kind"], e["data"]["model"]) for e in events}
    assert {("model.load", "a"), ("model.load", "b"), ("model.refused", "huge")} <= kinds
    refused = next(e for e in events
                   if e["kind"] == "model.refused" and e["data"]["model"] == "huge")
    assert refused["data"]["reason"] == "model_too_large" and refused["actor"] == "daemon"
