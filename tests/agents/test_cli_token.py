"""``edged portal-token`` mints with the daemon's key and never makes one of its own."""

from __future__ import annotations

from pathlib import Path

from tests.edgedtest import REPO, cli


def test_minting_without_a_key_fails_and_creates_nothing(tmp_path: Path) -> None:
    state = tmp_path / "st"
    out = cli("portal-token", "P-1", "--config", str(REPO / "config" / "edged.toml"),
              "--state-dir", str(state))
    assert out.returncode != 0
    assert "no portal key at" in out.stderr and str(state) in out.stderr
    assert not (state / "keys" / "portal.key").exists()


def test_minting_with_the_state_dir_uses_its_key(tmp_path: Path) -> None:
    keys = tmp_path / "st" / "keys"
    keys.mkdir(parents=True)
    (keys / "portal.key").write_bytes(b"k" * 32)
    out = cli("portal-token", "P-1", "--config", str(REPO / "config" / "edged.toml"),
              "--state-dir", str(tmp_path / "st"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("v1.")


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    key = tmp_path / "portal.key"
    key.write_bytes(b"k" * 32)
    assert "--ttl" in cli("portal-token", "P-1", "--ttl", "0s", "--key", str(key)).stderr
    assert "PATIENT_REF" in cli("portal-token", " ", "--key", str(key)).stderr
    empty = cli("chat", "kiosk", "", socket_path=tmp_path / "none.sock")
    assert empty.returncode != 0 and "MESSAGE: must not be empty" in empty.stderr
