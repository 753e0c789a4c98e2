"""The systemd files: verified and rated by systemd's own tools, and consistent with edged.

``systemd-analyze verify`` checks that ExecStart's binary exists, so it verifies a copy of
the unit whose ExecStart names this checkout's ``edged``; everything else is the shipped file.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edged.cli import build_parser
from edged.config import load_config, parse_toml_text
from tests.edgedtest import REPO

UNITS = REPO / "systemd"
SHIPPED_EXEC = "/usr/bin/edged"
MAX_EXPOSURE = 2.0


def tool(name: str) -> str:
    found = shutil.which(name, path=f"/usr/bin:/bin:{Path(sys.executable).parent}")
    assert found, f"{name} is not installed (Debian package systemd; .ci/run installs it)"
    return found


def unit(name: str) -> configparser.ConfigParser:
    # strict=False: a unit may repeat a key (SystemCallFilter=); the last one wins here.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


@pytest.fixture(scope="module")
def verified_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("units")
    service = (UNITS / "edged.service").read_text()
    assert f"ExecStart={SHIPPED_EXEC} " in service
    local = Path(sys.executable).parent / "edged"
    assert local.exists(), "the edged console script is not installed in this venv"
    (folder / "edged.service").write_text(
        service.replace(f"ExecStart={SHIPPED_EXEC} ", f"ExecStart={local} "))
    shutil.copy(UNITS / "edged.socket", folder / "edged.socket")
    return folder


def test_systemd_analyze_verify(verified_copy: Path) -> None:
    result = subprocess.run([tool("systemd-analyze"), "verify", "edged.service", "edged.socket"],
                            cwd=verified_copy, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    complaints = [ln for ln in result.stderr.splitlines() if "edged." in ln]
    assert not complaints, result.stderr


def test_security_exposure_is_2_or_better(verified_copy: Path) -> None:
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", "edged.service"],
        cwd=verified_copy, capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for edged\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_service_has_what_design_asks_for() -> None:
    service = unit("edged.service")["Service"]
    expected = {
        "Type": "notify", "WatchdogSec": "30", "User": "edged", "RuntimeDirectory": "edged",
        "StateDirectory": "edged", "ConfigurationDirectory": "edged",
        "RestartPreventExitStatus": "78", "ProtectSystem": "strict", "NoNewPrivileges": "yes",
        "PrivateTmp": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    assert {k: service.get(k) for k in expected} == expected


def test_execstart_is_a_valid_serve_command() -> None:
    argv = shlex.split(unit("edged.service")["Service"]["ExecStart"])
    assert argv[0] == SHIPPED_EXEC
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.config, args.state_dir, args.socket) == (
        "serve", "/etc/edged/edged.toml", "/var/lib/edged", "/run/edged/edged.sock")


def test_stop_timeout_outlasts_the_drain() -> None:
    stop = float(unit("edged.service")["Service"]["TimeoutStopSec"])
    for cfg in (parse_toml_text(""), load_config(REPO / "config" / "edged.toml")):
        assert stop > cfg.daemon.grace_period + 5, "systemd would SIGKILL a drain in progress"


def test_memory_max_is_above_the_model_budget() -> None:
    # The budget is a share of the cgroup limit (memory.max) that MemoryMax sets, so it stays
    # below it whatever the box's RAM; a share of 100% would leave the daemon no room.
    limit = unit("edged.service")["Service"]["MemoryMax"]
    assert re.fullmatch(r"\d+%", limit) and int(limit[:-1]) <= 100
    for cfg in (parse_toml_text(""), load_config(REPO / "config" / "edged.toml")):
        assert cfg.models.budget.memory_percent is not None
        assert cfg.models.budget.memory_percent < 100


def test_the_socket_unit_listens_where_the_service_serves() -> None:
    socket = unit("edged.socket")["Socket"]
    argv = shlex.split(unit("edged.service")["Service"]["ExecStart"])
    assert socket["ListenStream"] == argv[argv.index("--socket") + 1]
    assert (socket["SocketMode"], socket["SocketUser"], socket["SocketGroup"]) == (
        "0660", "edged", "edged")


def test_sysusers_and_tmpfiles_make_the_user_groups_and_folders(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").touch()
    (tmp_path / "etc" / "group").touch()
    subprocess.run([tool("systemd-sysusers"), f"--root={tmp_path}",
                    str(UNITS / "sysusers.d" / "edged.conf")],
                   check=True, capture_output=True, timeout=60)
    users = {ln.split(":")[0]: ln.split(":") for ln in (tmp_path / "etc/passwd").read_text()
             .splitlines()}
    groups = {ln.split(":")[0]: ln.split(":") for ln in (tmp_path / "etc/group").read_text()
              .splitlines()}
    defaults = parse_toml_text("").daemon
    assert "edged" in users
    assert set(defaults.client_groups) | set(defaults.admin_groups) <= set(groups)
    subprocess.run([tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create",
                    str(UNITS / "tmpfiles.d" / "edged.conf")],
                   check=True, capture_output=True, timeout=60)
    uid = int(users["edged"][2])
    keys = (tmp_path / "etc/edged/keys").stat()
    assert (keys.st_uid, keys.st_mode & 0o777) == (uid, 0o700)
    assert (tmp_path / "run/edged").stat().st_uid == uid
    assert (tmp_path / "var/lib/edged").stat().st_mode & 0o777 == 0o750
