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


def test_state_dir_alone_works_outside_the_checkout(tmp_path: Path) -> None:
    keys = tmp_path / "st" / "keys"
    keys.mkdir(parents=True)
    (keys / "portal.key").write_bytes(b"k" * 32)
    out = cli("portal-token", "P-1", "--state-dir", "st", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("v1.")


def test_offline_verbs_outside_the_checkout_say_what_is_missing(tmp_path: Path) -> None:
    for verb in (("audit", "verify"), ("portal-token", "P-1")):
        out = cli(*verb, cwd=tmp_path)
        assert out.returncode == 78
        assert "invalid config" not in out.stderr
        assert "no config file" in out.stderr and "--state-dir" in out.stderr
    elsewhere = cli("audit", "verify", "--state-dir", "empty", cwd=tmp_path)
    assert elsewhere.returncode == 78 and "no such key file" in elsewhere.stderr
    assert "pass the same --state-dir" in elsewhere.stderr


def test_chat_takes_its_message_after_the_options(tmp_path: Path) -> None:
    # Parsed, then refused only because no daemon answers (69), not as a usage error (2).
    for argv in (("kiosk", "--session", "s1", "hi"), ("kiosk", "is", "it", "in", "stock")):
        out = cli("chat", *argv, socket_path=tmp_path / "none.sock")
        assert out.returncode == 69, out.stderr
    assert cli("chat", "kiosk", "--bogus", "hi").returncode == 2
    usage = cli("chat", "--help").stdout
    assert "[agents.NAME]" in usage and "prompt loop" in usage
