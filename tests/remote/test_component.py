"""The real daemon taking pushes over POST /admin/config and the CLI: every refusal leaves
the running config alone; a good push changes behaviour without a restart; fleet keys rotate."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.client import ApiError
from tests.edgedtest import (
    REPO,
    RunningDaemon,
    base_config,
    cli,
    deep_merge,
    short_tmpdir,
    start_daemon,
)
from tests.remote.fleet import bundle, pushed_doc, trust


@dataclass
class Box:
    daemon: RunningDaemon
    key: Ed25519PrivateKey
    state: Path

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self.daemon.client.get("/admin/config")
        return data

    def next_version(self) -> int:
        return int(self.status()["highest"]) + 1

    def push(self, raw: bytes, wait: bool = True) -> dict[str, Any]:
        path = "/admin/config?wait=true" if wait else "/admin/config"
        data: dict[str, Any] = self.daemon.client.post(path, json.loads(raw))
        return data

    def doc(self, extra: dict[str, Any] | None = None) -> str:
        return pushed_doc(self.state, deep_merge(BOX_EXTRA, extra or {}))


BOX_EXTRA: dict[str, Any] = {"remote": {"health_window": "1s"},
                             "daemon": {"device_tags": ["kiosk", "eu"]}}


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    tmp = short_tmpdir()
    state = tmp / "st"
    key = Ed25519PrivateKey.generate()
    trust(state / "keys", key)
    daemon = start_daemon(deep_merge(base_config(state), BOX_EXTRA), state_dir=state)
    try:
        yield Box(daemon, key, state)
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_good_push_is_applied_and_confirmed_and_shown(box: Box) -> None:
    v = box.next_version()
    result = box.push(bundle(box.key, box.doc({"remote": {"pull_interval": "1h"}}), v))
    assert result["version"] == v and result["state"] == "confirmed"
    assert result["changed"] == ["remote"] and result["restart_required"] == []
    status = box.status()
    assert status["active"]["version"] == v and status["active"]["state"] == "confirmed"
    assert status["running_version"] == v
    assert status["previous"]["version"] == v - 1
    latest = [(h["outcome"], h["version"]) for h in status["history"][:2]]
    assert latest == [("confirmed", v), ("applied", v)]
    text = (box.state / "config" / f"v{v}.toml").read_text()
    assert text == box.doc({"remote": {"pull_interval": "1h"}})


def test_a_push_by_tag_changes_a_running_component_without_restart(box: Box) -> None:
    pid = box.daemon.proc.pid
    v = box.next_version()
    box.push(bundle(box.key, box.doc({"remote": {"max_bundle_bytes": "8KiB"}}), v,
                    devices=(), tags=("kiosk",)))
    padded = box.doc() + "#" * 9000 + "\n"
    with pytest.raises(ApiError) as err:
        box.push(bundle(box.key, padded, v + 1))
    assert err.value.code == "bundle_too_large" and err.value.status == 413
    assert "remote.max_bundle_bytes" in err.value.message
    box.push(bundle(box.key, box.doc(), v + 1))  # small enough; puts the limit back
    assert box.daemon.proc.pid == pid and box.daemon.proc.poll() is None
    assert box.status()["running_version"] == v + 1


def _refusals(box: Box, v: int) -> dict[str, tuple[bytes, str, str]]:
    """name -> (bundle, expected code, text the message must contain)"""
    stranger = Ed25519PrivateKey.generate()
    good = json.loads(bundle(box.key, box.doc(), v))
    unsigned = {k: val for k, val in good.items() if k != "signature"}
    tampered = {**good, "config": box.doc({"budget": {"memory": "64GiB"}})}
    outside = box.doc({"models": {"x": {"path": "/etc/passwd"}}})
    keys = box.doc({"agents": {"data_dir": str(box.state / "keys")}})
    relocate = box.doc().replace('["daemon"]\n', '["daemon"]\nkeys_dir = "/tmp/k"\n')
    return {
        "unsigned": (json.dumps(unsigned).encode(), "unsigned", "bundle.signature"),
        "unknown key": (bundle(stranger, box.doc(), v), "unknown_fleet_key", "bundle.key_id"),
        "tampered": (json.dumps(tampered).encode(), "bad_signature", "bundle.signature"),
        "older": (bundle(box.key, box.doc(), 1), "stale_version", "bundle.version"),
        "other device": (bundle(box.key, box.doc(), v, devices=("box-9",), tags=("us",)),
                         "not_for_this_device", "bundle.selector"),
        "invalid inside": (bundle(box.key, box.doc({"budget": {"memory": "12XB"}}), v),
                           "invalid_config", "budget.memory"),
        "not toml": (bundle(box.key, "[budget\n", v), "invalid_config", "bundle.config"),
        "oversized": (bundle(box.key, box.doc() + "#" * 300_000 + "\n", v),
                      "bundle_too_large", "remote.max_bundle_bytes"),
        "path outside": (bundle(box.key, outside, v), "path_not_allowed", "models.x.path"),
        "into keys": (bundle(box.key, keys, v), "path_not_allowed", "agents.data_dir"),
        "relocates keys": (bundle(box.key, relocate, v), "locked_key", "daemon.keys_dir"),
    }


def test_every_bad_bundle_is_refused_with_a_reason_and_nothing_changes(box: Box) -> None:
    before = box.status()
    v = before["highest"] + 1
    files = sorted(p.name for p in (box.state / "config").iterdir())
    for name, (raw, code, where) in _refusals(box, v).items():
        with pytest.raises(ApiError) as err:
            box.push(raw)
            pytest.fail(f"{name}: accepted")
        assert err.value.code == code, (name, err.value.message)
        assert where in err.value.message, (name, err.value.message)
        assert err.value.status < 500, name
        after = box.status()
        assert after["active"] == before["active"] and after["highest"] == before["highest"]
        assert after["history"][0]["outcome"] == "rejected"
        assert after["history"][0]["code"] == code
    assert sorted(p.name for p in (box.state / "config").iterdir()) == files


def test_a_replayed_bundle_is_refused(box: Box) -> None:
    raw = bundle(box.key, box.doc(), box.next_version())
    box.push(raw)
    with pytest.raises(ApiError) as err:
        box.push(raw)
    assert err.value.code == "stale_version" and "replay" in err.value.message


def test_cli_signs_applies_and_shows(box: Box, tmp_path: Path) -> None:
    key_file = tmp_path / "fleet.key"
    key_file.write_bytes(box.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    doc = tmp_path / "push.toml"
    doc.write_text(box.doc({"remote": {"pull_interval": "2h"}}))
    v = box.next_version()
    out = tmp_path / "push.bundle"
    sign = cli("config", "sign", "--key", str(key_file), "--version", str(v), "--device",
               "test-box", "-o", str(out), str(doc))
    assert sign.returncode == 0, sign.stderr
    applied = cli("config", "apply", "--wait", str(out), socket_path=box.daemon.socket)
    assert applied.returncode == 0, applied.stderr
    assert f"config v{v} applied (confirmed)" in applied.stdout
    again = cli("config", "apply", str(out), socket_path=box.daemon.socket)
    assert again.returncode == 1 and "stale_version" in again.stderr
    show = cli("config", "show", socket_path=box.daemon.socket)
    assert f"active:   v{v} (confirmed) from api" in show.stdout
    assert "rejected" in show.stdout
    shown = json.loads(cli("config", "show", "--json", socket_path=box.daemon.socket).stdout)
    assert shown["active"]["version"] == v
    bad = tmp_path / "bad.toml"
    bad.write_text('[budget]\nmemory = "12XB"\n')
    refused = cli("config", "sign", "--key", str(key_file), "--version", "99", "--all-devices",
                  str(bad))
    assert refused.returncode == 78 and "budget.memory" in refused.stderr
    local = cli("config", "sign", "--key", str(key_file), "--version", "99", "--all-devices",
                str(box.daemon.config_path))  # the box's own file names its state_dir
    assert local.returncode == 78 and "daemon.state_dir" in local.stderr
    empty = tmp_path / "empty.toml"
    empty.write_text("")  # would wipe every agent and model of the boxes it reaches
    refused = cli("config", "sign", "--key", str(key_file), "--version", "99", "--all-devices",
                  str(empty))
    assert refused.returncode == 78 and "allow_removal = true" in refused.stderr
    empty.write_text("allow_removal = true\n")
    meant = cli("config", "sign", "--key", str(key_file), "--version", "99", "--all-devices",
                "-o", str(tmp_path / "empty.bundle"), str(empty))
    assert meant.returncode == 0, meant.stderr


def test_fleet_key_rotation(box: Box) -> None:
    new_key = Ed25519PrivateKey.generate()
    new_pub = trust(box.state / "keys", new_key)
    v = box.next_version()
    box.push(bundle(box.key, box.doc(), v))  # the old key still works
    box.push(bundle(new_key, box.doc(), v + 1))  # and so does the new one
    old_pub = box.state / "keys" / "fleet" / f"fleet-{_kid(box.key)}.pub"
    old_pub.unlink()
    with pytest.raises(ApiError) as err:
        box.push(bundle(box.key, box.doc(), v + 2))
    assert err.value.code == "unknown_fleet_key"
    box.push(bundle(new_key, box.doc(), v + 2))
    assert box.status()["active"]["key_id"] == _kid(new_key)
    # hand the box back to the module's key for later tests
    trust(box.state / "keys", box.key)
    new_pub.unlink()


def _kid(key: Ed25519PrivateKey) -> str:
    from edged.remote.bundle import key_id

    return key_id(key.public_key())


def test_every_outcome_is_in_the_audit_log(box: Box) -> None:
    out = cli("audit", "export", "--config", str(box.daemon.config_path), "--json",
              "--kind", "config.rejected", "--kind", "config.confirmed")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for code in ("unsigned", "unknown_fleet_key", "bad_signature", "stale_version",
                 "not_for_this_device", "invalid_config", "path_not_allowed"):
        assert f'"code": "{code}"' in text, code
    assert '"type": "config.confirmed"' in text


def test_a_push_switches_the_power_sensors_in_place(box: Box) -> None:
    fixture = REPO / "tests" / "models" / "fixtures" / "sysfs_battery"
    sys_copy = box.state / "data" / "sys"
    shutil.copytree(fixture, sys_copy, dirs_exist_ok=True)
    power = {"power_supply_root": str(sys_copy / "power_supply"),
             "thermal_root": str(sys_copy / "thermal")}
    result = box.push(bundle(box.key, box.doc({"power": power}), box.next_version()))
    assert result["changed"] == ["power"] and result["restart_required"] == []
    health = box.daemon.client.get("/health")["power"]
    assert health["profile"] == "battery" and health["battery_percent"] == 55.0
