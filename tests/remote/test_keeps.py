"""A push may not quietly take away what the box has (QA G4), forged bundles are refused for
what they are even during a trial (G5), and a relative --state-dir stays where it was given
when a pushed config is active (G13). In-process, with real files, SQLite and keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.cli_context import config_for
from edged.config import load_config
from edged.errors import ConfigError, EdgedError
from edged.remote.component import RemoteComponent
from edged.remote.versions import load_active, running_version
from edged.store import Store
from tests.edgedtest import base_config, deep_merge, dump_toml
from tests.remote.fleet import bundle, pushed_doc, trust


def _box(state: Path, examples: Path) -> dict[str, Any]:
    """A box with a default model and an agent whose examples file lies outside the folders
    a push may use (it is the local file's own)."""
    return {
        "models": {"default": "m", "m": {"format": "gguf",
                                         "path": str(state / "models" / "m.gguf")}},
        "agents": {"kiosk": {"model": "m", "description": "d", "instructions": "i",
                             "examples_file": str(examples)}},
        "sync": {"endpoint": "https://cloud.example"},
        "remote": {"health_window": "1h"},
    }


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[tuple[RemoteComponent, Any, Path]]:
    state = tmp_path / "st"
    examples = tmp_path / "outside" / "kiosk.toml"
    examples.parent.mkdir()
    examples.write_text("")
    key = Ed25519PrivateKey.generate()
    trust(state / "keys", key)
    local = tmp_path / "edged.toml"
    local.write_text(dump_toml(deep_merge(base_config(state), _box(state, examples))))
    cfg = load_active(load_config(local))

    def sign(extra: dict[str, Any] | None, version: int, *, head: str = "") -> bytes:
        doc = "" if extra is None else head + pushed_doc(state, extra)
        return bundle(key, doc, version)

    async with Store(state / "edged.db", [RemoteComponent.schema]) as store:
        remote = RemoteComponent(cfg, store, health={}, targets=[])
        runner = asyncio.create_task(remote.manager.run())
        yield remote, sign, examples
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def _refused(remote: RemoteComponent, raw: bytes) -> EdgedError:
    with pytest.raises(EdgedError) as err:
        await remote.manager.apply(raw, source="api", actor="t")
    return err.value


async def test_a_push_that_drops_sections_agents_or_models_is_refused(box: Any) -> None:
    remote, sign, examples = box
    full = _box(remote.manager.config.daemon.state_dir, examples)
    empty = await _refused(remote, sign(None, 1))
    assert empty.code == "incomplete_config" and "[agents]" in empty.message
    # [daemon] too: the local file sets grace_period, which a push may change
    assert "[models]" in empty.message and "[daemon]" in empty.message
    no_agents = await _refused(remote, sign({**full, "agents": {}, "models": {}}, 2))
    assert no_agents.code == "incomplete_config"
    assert "every agent (kiosk)" in no_agents.message and "every model" in no_agents.message
    no_default = deep_merge(full, {})
    del no_default["models"]["default"]
    refused = await _refused(remote, sign(no_default, 3))
    assert "the default model (m)" in refused.message
    no_endpoint = {**full, "sync": {}}
    assert "sync.endpoint" in (await _refused(remote, sign(no_endpoint, 4))).message
    assert len(remote.manager.config.agents.agents) == 1
    history = (await remote.manager.status())["history"]
    assert [h["code"] for h in history[:4]] == ["incomplete_config"] * 4


async def test_an_explicit_removal_applies_and_the_fleet_can_put_the_box_back(
        box: Any) -> None:
    remote, sign, examples = box
    full = _box(remote.manager.config.daemon.state_dir, examples)
    bare = {**full, "agents": {}, "models": {}, "sync": {}, "remote": {"health_window": "0.1s"}}
    raw = sign(bare, 1, head="allow_removal = true\n")
    await remote.manager.apply(raw, source="api", actor="t", wait=True)
    assert not remote.manager.config.agents.agents
    # the examples file is outside <state>/models|data, but it is the local file's own
    back = await remote.manager.apply(sign(full, 2), source="api", actor="t")
    assert back["version"] == 2
    assert remote.manager.config.agents.agents["kiosk"].examples_file == examples
    bad_flag = await _refused(remote, sign(full, 3, head="allow_removal = 1\n"))
    assert bad_flag.code == "invalid_config" and "allow_removal" in bad_flag.message


async def test_a_forged_bundle_during_a_trial_is_refused_for_what_it_is(box: Any) -> None:
    remote, sign, examples = box
    full = _box(remote.manager.config.daemon.state_dir, examples)
    good = sign(full, 1)
    result = await remote.manager.apply(good, source="api", actor="t")
    assert result["state"] == "trial"  # a 1h window: still on trial below
    tampered = json.loads(good)
    tampered["config"] = tampered["config"].replace("kiosk", "kiosk2")
    tampered["version"] = 2
    unsigned = dict(tampered)
    del unsigned["signature"]
    codes = []
    for doc in (tampered, unsigned):
        codes.append((await _refused(remote, json.dumps(doc).encode())).code)
    assert codes == ["bad_signature", "unsigned"]
    busy = await _refused(remote, sign(full, 2))
    assert busy.code == "apply_in_progress"
    history = (await remote.manager.status())["history"]
    assert [h["code"] for h in history[:2]] == ["unsigned", "bad_signature"]
    assert running_version(remote.manager.config) == 1


async def test_a_relative_state_dir_stays_relative_to_the_working_folder(
        box: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remote, sign, examples = box
    full = _box(remote.manager.config.daemon.state_dir, examples)
    await remote.manager.apply(sign(full, 1), source="api", actor="t")
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(config=str(tmp_path / "edged.toml"), state_dir="st",
                              socket="s.sock")
    cfg = config_for(args)
    assert running_version(cfg) == 1
    assert cfg.daemon.state_dir == tmp_path / "st"
    assert cfg.daemon.keys_dir == tmp_path / "st" / "keys"
    assert cfg.daemon.socket == tmp_path / "s.sock"


def test_sign_refuses_a_document_without_agents_or_models(tmp_path: Path) -> None:
    from edged.remote.admission import check_signable
    with pytest.raises(ConfigError, match=r"no \[models\] and no \[agents\]"):
        check_signable({}, tmp_path / "empty.toml")
    check_signable({"models": {}, "agents": {}}, tmp_path / "full.toml")
