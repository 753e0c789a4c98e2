"""Pushes reload running components in place: an agent changes behaviour without a restart,
and a push whose new model cannot load is rolled back and reported."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.client import ApiError
from tests.edgedtest import (
    MODEL_CACHE,
    REPO,
    RunningDaemon,
    base_config,
    bundled_alias,
    bundled_model,
    deep_merge,
    short_tmpdir,
    start_daemon,
)
from tests.remote.fleet import bundle, pushed_doc, trust

KIOSK_TOOLS = ["check_inventory", "find_alternatives", "create_price_quote", "create_ticket"]
IN_STOCK = "Do you have the Galaxy S24 in stock?"


def kiosk(tools: list[str]) -> dict[str, Any]:
    """The kiosk agent without model help (lexical routing, template replies)."""
    return {
        "remote": {"health_window": "0.5s"},
        "models": {"cache_dir": str(MODEL_CACHE.parent),
                   "gemma3-270m": bundled_alias(context=512)},
        "agents": {"data_dir": str(REPO / "config" / "data"),
                   "kiosk": {"model": "gemma3-270m", "model_slots": False,
                             "model_reply": False, "tools": tools, "store": "downtown",
                             "examples_file": str(REPO / "config" / "agents" / "kiosk.toml")}},
    }


@pytest.fixture(scope="module")
def box() -> Iterator[tuple[RunningDaemon, Ed25519PrivateKey, Path]]:
    tmp = short_tmpdir()
    state = tmp / "st"
    key = Ed25519PrivateKey.generate()
    trust(state / "keys", key)
    daemon = start_daemon(deep_merge(base_config(state), kiosk(KIOSK_TOOLS)), state_dir=state)
    try:
        yield daemon, key, state
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _tools_used(daemon: RunningDaemon, message: str) -> list[str]:
    turn = daemon.client.post("/v1/agents/kiosk/chat", {"message": message})
    return [a["tool"] for a in turn["actions"]]


def _push(daemon: RunningDaemon, raw: bytes) -> dict[str, Any]:
    result: dict[str, Any] = daemon.client.post("/admin/config?wait=true", json.loads(raw))
    return result


def test_a_push_changes_a_running_agent_without_a_restart(box: Any) -> None:
    daemon, key, state = box
    assert "check_inventory" in _tools_used(daemon, IN_STOCK)
    fewer = [t for t in KIOSK_TOOLS if t != "check_inventory"]
    result = _push(daemon, bundle(key, pushed_doc(state, kiosk(fewer)), 1))
    assert result["changed"] == ["agents"] and result["restart_required"] == []
    assert result["state"] == "confirmed"
    assert "check_inventory" not in _tools_used(daemon, IN_STOCK)
    _push(daemon, bundle(key, pushed_doc(state, kiosk(KIOSK_TOOLS)), 2))
    assert "check_inventory" in _tools_used(daemon, IN_STOCK)
    assert daemon.proc.poll() is None


def test_a_push_whose_model_cannot_load_is_rolled_back(box: Any) -> None:
    daemon, key, state = box
    broken = state / "models" / "broken.gguf"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    doc = pushed_doc(state, deep_merge(kiosk(KIOSK_TOOLS), {"models": {
        "default": "broken", "broken": {"path": str(broken), "context": 512}}}))
    with pytest.raises(ApiError) as err:
        _push(daemon, bundle(key, doc, 3))
    assert err.value.code == "rolled_back" and "'broken' cannot load" in err.value.message
    status = daemon.client.get("/admin/config")
    assert status["active"]["version"] == 2 and status["running_version"] == 2
    assert status["highest"] == 3  # v3 cannot be replayed
    assert [h["outcome"] for h in status["history"][:2]] == ["rolled_back", "applied"]
    assert "broken" in status["history"][0]["reason"]
    models = [m["id"] for m in daemon.client.get("/v1/models")["data"]]
    assert "broken" not in models and "gemma3-270m" in models
    assert "check_inventory" in _tools_used(daemon, IN_STOCK)


def test_a_change_no_component_takes_in_place_is_flagged(box: Any) -> None:
    daemon, key, state = box
    doc = pushed_doc(state, deep_merge(kiosk(KIOSK_TOOLS), {"logging": {"level": "info"}}))
    result = _push(daemon, bundle(key, doc, 4))
    assert result["restart_required"] == ["logging"]
    assert daemon.client.get("/health")["remote"]["restart_required"] == ["logging"]


def test_a_push_does_not_drop_a_generation_in_flight(box: Any) -> None:
    daemon, key, state = box
    bundled_model()
    events = daemon.client.stream("/v1/chat/completions", {
        "model": "gemma3-270m", "messages": [{"role": "user", "content": "Count to fifty."}],
        "stream": True, "max_tokens": 48, "temperature": 0})
    first = next(events)
    assert first["choices"][0]["delta"] is not None
    more = deep_merge(kiosk(KIOSK_TOOLS), {"models": {"spare": bundled_alias(context=256)}})
    version = daemon.client.get("/admin/config")["highest"] + 1
    result = _push(daemon, bundle(key, pushed_doc(state, more), version))
    assert "models" in result["changed"] and result["state"] == "confirmed"
    rest = list(events)
    assert rest and rest[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    loaded = [m["model"] for m in daemon.client.get("/admin/ps")["models"]]
    assert loaded == ["gemma3-270m"]  # unchanged in the push: still loaded, not reloaded
