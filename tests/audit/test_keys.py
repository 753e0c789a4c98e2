"""Keys: made 0600, never overwritten, rotated with the old one kept; the daemon refuses
key files that others may read, and a key that does not match the log."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from edged.audit.keys import init_keys, load_keys
from edged.errors import ConfigError
from tests.audit.helpers import write_log
from tests.edgedtest import RunningDaemon, cli


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_init_makes_private_files_once(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    made = cli("keys", "init", "--keys-dir", str(keys))
    assert made.returncode == 0, made.stderr
    assert mode(keys) == 0o700
    assert mode(keys / "audit.key") == 0o600 and mode(keys / "device.key") == 0o600
    assert len((keys / "audit.key").read_bytes()) == 32
    before = (keys / "audit.key").read_bytes()
    again = cli("keys", "init", "--keys-dir", str(keys))
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert (keys / "audit.key").read_bytes() == before


def test_keys_rotate_keeps_the_old_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    init_keys(keys)
    old = load_keys(keys)
    out = cli("keys", "rotate", "--keys-dir", str(keys), "--json")
    assert out.returncode == 0, out.stderr
    new = load_keys(keys)
    assert new.current_id != old.current_id
    assert set(new.keys) == {old.current_id, new.current_id}
    assert mode(keys / "audit.key") == 0o600
    assert (keys / f"audit-{old.current_id:08x}.key").read_bytes() == old.keys[old.current_id]


@pytest.mark.parametrize("name", ["audit.key", "device.key"])
def test_readable_key_file_is_refused(tmp_path: Path, name: str) -> None:
    init_keys(tmp_path)
    os.chmod(tmp_path / name, 0o644)
    with pytest.raises(ConfigError, match=rf"{name}: key file is accessible by group or others "
                                          r"\(mode 0644\)"):
        load_keys(tmp_path)


def test_daemon_refuses_a_group_readable_key(edged: Callable[..., RunningDaemon],
                                             state_dir: Path) -> None:
    init_keys(state_dir / "keys")
    os.chmod(state_dir / "keys" / "audit.key", 0o640)
    d = edged(expect_ready=False)
    assert d.proc.wait(60) == 78
    assert "key file is accessible by group or others (mode 0640)" in d.log()


def test_daemon_makes_keys_on_a_fresh_box(edged: Callable[..., RunningDaemon],
                                          state_dir: Path) -> None:
    d = edged()
    assert mode(state_dir / "keys" / "audit.key") == 0o600
    assert "created new audit and device keys" in d.log()
    assert d.stop() == 0, d.log()[-3000:]


def test_daemon_without_the_key_of_its_log_refuses(edged: Callable[..., RunningDaemon],
                                                   state_dir: Path) -> None:
    write_log(state_dir, 3)
    (state_dir / "keys" / "audit.key").unlink()
    d = edged(expect_ready=False)
    assert d.proc.wait(60) == 78
    assert "audit.key: no such key file" in d.log()


def test_daemon_with_a_wrong_key_refuses(edged: Callable[..., RunningDaemon],
                                         state_dir: Path, tmp_path: Path) -> None:
    write_log(state_dir, 3)
    init_keys(tmp_path / "other")
    (state_dir / "keys" / "audit.key").write_bytes((tmp_path / "other" / "audit.key").read_bytes())
    d = edged(expect_ready=False)
    assert d.proc.wait(60) == 1
    assert "which is not in the keys folder" in d.log()
