"""SIGKILL at every step of an apply leaves the old or the new config active, never a mix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.config import load_config
from edged.remote.versions import VersionDir, load_active, running_version
from tests.edgedtest import REPO, base_config, deep_merge, dump_toml, short_tmpdir, start_daemon
from tests.remote.fleet import bundle, pushed_doc, trust


def _run_child(config: Path, bundle_file: Path, kill_at: int) -> bool:
    """True when the apply ran to its end, False when it was killed as asked."""
    proc = subprocess.run([sys.executable, "-m", "tests.remote.apply_child", str(config),
                           str(bundle_file), str(kill_at)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    if proc.returncode == -9:
        return False
    assert proc.returncode == 0, proc.stderr
    return True


V1_MARKS = (1024**3, 3600.0, 60.0)
V2_MARKS = (3 * 1024**3, 9.0, 900.0)


@pytest.fixture
def seeded() -> Iterator[Path]:
    """A box folder (relative paths, so it can be copied) with v1 applied."""
    tmp = short_tmpdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_sigkill_at_every_step_of_an_apply(seeded: Path) -> None:
    key = Ed25519PrivateKey.generate()
    seed = seeded / "seed"
    local = deep_merge(base_config(Path("st")), {"daemon": {"socket": "st/s.sock"}})
    seed.mkdir()
    (seed / "edged.toml").write_text(dump_toml(local))
    trust(seed / "st" / "keys", key)
    v1 = pushed_doc(Path("st"), {"budget": {"memory": "1GiB"}, "remote": {"pull_interval": 60}})
    # v1 has a [remote] section, so v2 must too (a push keeps every section).
    v2 = pushed_doc(Path("st"), {"budget": {"memory": "3GiB"}, "agents": {"session_ttl": 9},
                                 "remote": {"pull_interval": "15m"}})
    (seeded / "v1.bundle").write_bytes(bundle(key, v1, 1))
    (seeded / "v2.bundle").write_bytes(bundle(key, v2, 2))
    assert _run_child(seed / "edged.toml", seeded / "v1.bundle", 0)
    outcomes: list[int] = []
    for kill_at in range(1, 200):
        box = seeded / f"k{kill_at}"
        shutil.copytree(seed, box)
        finished = _run_child(box / "edged.toml", seeded / "v2.bundle", kill_at)
        cfg = load_active(load_config(box / "edged.toml"))
        version = running_version(cfg)
        assert version in (1, 2), f"killed at step {kill_at}: running v{version}"
        pointer = VersionDir(box / "st" / "config").read_pointer()
        assert pointer.active.version == version
        # v1 and v2 differ in three sections: all three must come from the same version
        marks = (cfg.models.budget.memory_bytes, cfg.agents.session_ttl,
                 cfg.remote.pull_interval)
        assert marks == {1: V1_MARKS, 2: V2_MARKS}[version], f"killed at step {kill_at}"
        outcomes.append(version)
        shutil.rmtree(box)
        if finished:
            break
    assert finished, "the apply never finished"
    # early kills keep v1, late ones have v2, and there was something to kill in between
    assert outcomes[0] == 1 and outcomes[-1] == 2 and len(outcomes) > 5
    assert outcomes == sorted(outcomes)
    print(f"killed at {len(outcomes) - 1} steps: {outcomes}")


def test_sigkill_right_after_an_accepted_push_keeps_it_after_restart(seeded: Path) -> None:
    key = Ed25519PrivateKey.generate()
    state = seeded / "st"
    trust(state / "keys", key)
    config = deep_merge(base_config(state), {"remote": {"health_window": "1h"}})
    daemon = start_daemon(config, state_dir=state)
    try:
        doc = pushed_doc(state, {"remote": {"health_window": "1h", "pull_interval": 77}})
        result = daemon.client.post("/admin/config", json.loads(bundle(key, doc, 1)))
        assert result["state"] == "trial"
    finally:
        daemon.kill()
    daemon = start_daemon(config, state_dir=state)
    try:
        status = daemon.client.get("/admin/config")
        assert status["running_version"] == 1 and status["active"]["version"] == 1
        assert status["active"]["state"] == "trial"  # its health window starts again
        health = daemon.client.get("/health")["remote"]
        assert health["config_version"] == 1 and health["config_state"] == "trial"
    finally:
        daemon.stop()
