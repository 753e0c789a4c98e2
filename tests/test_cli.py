"""The real ``edged`` CLI against a live daemon, and when no daemon answers."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged import __version__
from tests.edgedtest import REPO, RunningDaemon, base_config, cli, running, short_tmpdir

EX_UNAVAILABLE = 69


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningDaemon]:
    folder = short_tmpdir()
    try:
        with running(base_config(folder / "st"), folder / "st") as d:
            yield d
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_status_for_people(daemon: RunningDaemon) -> None:
    result = cli("status", socket_path=daemon.socket)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"edged {__version__}  status: ok  uptime: ")
    assert "your role: admin (uid 0)" in first


def test_status_shows_every_component(daemon: RunningDaemon) -> None:
    parts = json.loads(cli("status", "--json", socket_path=daemon.socket).stdout)
    human = cli("status", socket_path=daemon.socket).stdout
    for name, part in parts.items():
        if isinstance(part, dict) and name != "peer":
            assert f"\n  {name}: " in human, human
    assert "None" not in human, "unset values are left out"


def test_status_json_for_scripts(daemon: RunningDaemon) -> None:
    result = cli("status", "--json", socket_path=daemon.socket)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "ok"
    assert data["peer"]["role"] == "admin"
    assert data["uptime_s"] >= 0


@pytest.mark.parametrize("where", ["before", "after"])
def test_socket_flag_works_before_or_after_the_verb(daemon: RunningDaemon, where: str) -> None:
    flag = ["--socket", str(daemon.socket)]
    argv = [*flag, "status", "--json"] if where == "before" else ["status", "--json", *flag]
    result = cli(*argv, env={"EDGED_SOCKET": "/nonexistent/edged.sock"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "ok"


def test_no_daemon_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "edged.sock"
    result = cli("status", socket_path=missing)
    assert result.returncode == EX_UNAVAILABLE
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"no edged daemon answers on {missing}" in lines[0]
    assert "edged serve" in lines[0]


def test_a_dead_socket_file_is_one_clear_line_too(tmp_path: Path) -> None:
    path = tmp_path / "edged.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    result = cli("status", "--json", socket_path=path)
    assert result.returncode == EX_UNAVAILABLE
    assert "Connection refused" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # --json: scripts get the error envelope on stdout as well
    assert json.loads(result.stdout)["error"]["code"] == "unreachable"


def test_version() -> None:
    assert cli("--version").stdout.strip() == f"edged {__version__}"


def test_no_verb_is_a_usage_error() -> None:
    result = cli()
    assert result.returncode == 2
    assert "COMMAND" in result.stderr


def test_the_cli_and_the_daemon_import_no_model_runtime_at_startup() -> None:
    # llama.cpp and onnxruntime cost memory and start-up time: they load with the first model.
    code = ("import sys, edged.cli, edged.daemon; "
            "print(' '.join(m for m in ('llama_cpp', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
