"""The manager in-process with real files, SQLite and keys, and a small reloadable component
of the test's own: the health window rolls back a push that makes a part degraded, and a
component that refuses a config rolls the push back before any window."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.config import Config, load_config
from edged.errors import ConfigError
from edged.remote.component import RemoteComponent
from edged.remote.manager import RolledBack
from edged.remote.reload import ReloadTarget
from edged.remote.versions import VersionDir, load_active, running_version
from edged.store import Store
from tests.edgedtest import base_config, deep_merge, dump_toml
from tests.remote.fleet import bundle, pushed_doc, trust


class Sensor:
    """Takes [budget] in place: a 3GiB budget makes it degraded, 4GiB it refuses."""

    def __init__(self) -> None:
        self.seen: list[int | None] = []
        self.degraded = False

    async def reload(self, config: Config) -> None:
        memory = config.models.budget.memory_bytes
        if memory == 4 * 1024**3:
            raise ConfigError("budget.memory: 4GiB is not for this sensor")
        self.seen.append(memory)
        self.degraded = memory == 3 * 1024**3

    def health(self) -> dict[str, Any]:
        return {"degraded": self.degraded}


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[RemoteComponent, Sensor, Any, Path]]:
    state = tmp_path / "st"
    key = Ed25519PrivateKey.generate()
    trust(state / "keys", key)
    local = tmp_path / "edged.toml"
    local.write_text(dump_toml(deep_merge(base_config(state),
                                          {"remote": {"health_window": "0.3s"}})))
    cfg = load_active(load_config(local))
    sensor = Sensor()
    async with Store(state / "edged.db", [RemoteComponent.schema]) as store:
        remote = RemoteComponent(cfg, store, health={"sensor": sensor.health},
                                 targets=[ReloadTarget("sensor", ("budget",), sensor)])

        def sign(memory: str, version: int, window: str = "0.3s") -> bytes:
            doc = pushed_doc(state, {"budget": {"memory": memory},
                                     "remote": {"health_window": window}})
            return bundle(key, doc, version)

        yield remote, sensor, sign, state


async def test_a_push_that_makes_health_degraded_is_rolled_back(setup: Any) -> None:
    remote, sensor, sign, state = setup
    ok = await remote.manager.apply(sign("1GiB", 1), source="api", actor="t", wait=True)
    assert ok["state"] == "confirmed"
    with pytest.raises(RolledBack, match="health degraded: sensor"):
        await remote.manager.apply(sign("3GiB", 2), source="api", actor="t", wait=True)
    assert sensor.seen == [1024**3, 3 * 1024**3, 1024**3] and not sensor.degraded
    assert running_version(remote.manager.config) == 1
    pointer = VersionDir(state / "config").read_pointer()
    assert pointer.active.version == 1 and pointer.highest == 2
    history = await remote.manager.status()
    assert [h["outcome"] for h in history["history"][:2]] == ["rolled_back", "applied"]


async def test_a_component_refusing_rolls_back_before_any_window(setup: Any) -> None:
    remote, sensor, sign, state = setup
    with pytest.raises(RolledBack, match=r"sensor refused it: budget\.memory: 4GiB"):
        await remote.manager.apply(sign("4GiB", 1), source="api", actor="t")
    assert sensor.seen == []
    assert VersionDir(state / "config").read_pointer().active.version == 0
    assert running_version(remote.manager.config) == 0



async def test_a_trial_interrupted_by_a_restart_rolls_back_to_the_local_file(
        setup: Any) -> None:
    remote, sensor, sign, state = setup
    before = asyncio.create_task(remote.manager.run())
    # a window long enough that the "crash" (cancelling this manager) happens inside it
    result = await remote.manager.apply(sign("1GiB", 1, "1h"), source="api", actor="t")
    assert result["state"] == "trial"
    before.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await before
    # the restart: the config a new process loads, and a new manager over the same files
    cfg = load_active(load_config(state.parent / "edged.toml"))
    assert running_version(cfg) == 1 and cfg.models.budget.memory_bytes == 1024**3
    after = RemoteComponent(cfg, remote.store, health={"sensor": sensor.health},
                            targets=[ReloadTarget("sensor", ("budget",), sensor)])
    sensor.degraded = True  # unhealthy after the restart: the new window rolls back
    await after.manager.resume()
    assert "health degraded: sensor" in await after.manager.settled()
    assert VersionDir(state / "config").read_pointer().active.version == 0
    assert running_version(after.manager.config) == 0
    assert after.manager.config.models.budget.memory_bytes == 2 * 1024**3
    assert sensor.seen[-1] == 2 * 1024**3  # the sensor got the local file's budget back
