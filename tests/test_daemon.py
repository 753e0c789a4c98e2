"""The daemon's lifecycle, against the real process on a real socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edged.client import ApiError, Client
from tests.edgedtest import REPO, RunningDaemon, dump_toml, start_daemon

Start = Callable[..., RunningDaemon]


def test_start_then_sigterm_exits_0_and_removes_the_socket(edged: Start) -> None:
    d = edged()
    assert stat.S_IMODE(d.socket.stat().st_mode) == 0o660
    assert d.client.get("/health")["status"] == "ok"
    assert d.stop() == 0
    assert not d.socket.exists()
    assert "edged stopped" in d.log()


def test_sigint_stops_it_the_same_way(edged: Start) -> None:
    d = edged()
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(60) == 0
    assert not d.socket.exists()


def _in_flight(client: Client) -> float:
    """Requests being handled, not counting the /metrics request asking."""
    for line in client.get("/metrics").splitlines():
        if line.startswith("edged_http_requests_in_flight "):
            return float(line.split()[1]) - 1
    raise AssertionError("/metrics has no edged_http_requests_in_flight")


def _wait_in_flight(client: Client, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _in_flight(client) < count:
        assert time.monotonic() < deadline, f"never saw {count} request(s) in flight"


def _read_response(conn: socket.socket) -> tuple[int, dict[str, Any]]:
    conn.settimeout(60)
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before a response: {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        body += chunk
    return int(lines[0].split()[1]), json.loads(body)


# A POST route that reads its whole JSON body before answering: the handler is in flight
# while half the body is still on its way. The model named does not exist, so the answer
# (a 404 naming it) proves the handler read the body that was sent after SIGTERM.
IN_FLIGHT_ROUTE = "/v1/chat/completions"


def test_sigterm_lets_a_request_in_flight_finish(edged: Start) -> None:
    d = edged({}, keep_notify=True)
    body = json.dumps({"model": "no-such-model-xyz",
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    head = (f"POST {IN_FLIGHT_ROUTE} HTTP/1.1\r\nHost: edged\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(d.socket))
        conn.sendall(head + body[:20])
        _wait_in_flight(d.client, 1)
        d.proc.send_signal(signal.SIGTERM)
        d.notifications(until=b"STOPPING=1")
        # Draining: new requests are refused, the one in flight goes on.
        with pytest.raises(ApiError, match="shutting down"):
            d.client.get("/health")
        conn.sendall(body[20:])
        status, reply = _read_response(conn)
    assert status != 503, reply
    assert "no-such-model-xyz" in reply["error"]["message"]
    assert d.proc.wait(60) == 0
    assert not d.socket.exists()


def test_a_second_daemon_on_the_same_socket_is_refused(
        edged: Start, make_config: Callable[..., dict[str, Any]], short_tmp: Path) -> None:
    first = edged()
    other_state = short_tmp / "second"
    config = make_config({"daemon": {"state_dir": str(other_state)}})
    assert config["daemon"]["socket"] == str(first.socket)
    second = start_daemon(config, state_dir=other_state, expect_ready=False)
    assert second.proc.wait(60) != 0
    assert f"another edged is already listening on {first.socket}" in second.log()
    assert first.client.get("/health")["status"] == "ok"
    assert first.stop() == 0


def test_a_second_daemon_on_the_same_state_dir_is_refused(
        edged: Start, make_config: Callable[..., dict[str, Any]], short_tmp: Path) -> None:
    first = edged()
    other_socket = short_tmp / "other.sock"
    config = make_config({"daemon": {"socket": str(other_socket)}})
    second = start_daemon(config, state_dir=first.state_dir, expect_ready=False)
    assert second.proc.wait(60) != 0
    assert f"is in use by edged pid {first.proc.pid}" in second.log()
    assert not other_socket.exists(), "the refused daemon left its socket file behind"
    assert first.client.get("/health")["status"] == "ok"


def test_an_unusable_state_dir_is_one_error_line(
        make_config: Callable[..., dict[str, Any]], short_tmp: Path) -> None:
    blocker = short_tmp / "file"
    blocker.write_text("a file where the state folder should be")
    state_dir = blocker / "st"
    config = make_config({"daemon": {"state_dir": str(state_dir),
                                     "socket": str(short_tmp / "s.sock")}})
    d = start_daemon(config, state_dir=short_tmp / "cfg", expect_ready=False)
    assert d.proc.wait(60) == 1
    assert "ERROR   edged: cannot serve: " in d.log()
    assert "Traceback" not in d.log()
    assert not (short_tmp / "s.sock").exists()


def test_a_stale_socket_is_replaced(edged: Start, state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state_dir / "s.sock"))
    stale.close()  # the file stays, nobody listens: what a crash leaves
    d = edged()
    assert d.client.get("/health")["status"] == "ok"
    assert "replacing stale socket" in d.log()


def test_a_file_that_is_not_a_socket_is_left_alone(
        edged: Start, make_config: Callable[..., dict[str, Any]], state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    (state_dir / "s.sock").write_text("precious")
    d = start_daemon(make_config(), state_dir=state_dir, expect_ready=False)
    assert d.proc.wait(60) != 0
    assert "exists and is not a socket" in d.log()
    assert (state_dir / "s.sock").read_text() == "precious"


def test_ready_status_watchdog_and_stopping_reach_systemd(edged: Start) -> None:
    d = edged({}, keep_notify=True, env={"WATCHDOG_USEC": "200000"})  # pings every 0.1 s
    pings = [m for m in d.notifications(until=b"WATCHDOG=1") if b"WATCHDOG=1" in m]
    while len(pings) < 3:
        pings += [m for m in d.notifications(until=b"WATCHDOG=1") if b"WATCHDOG=1" in m]
    d.proc.send_signal(signal.SIGTERM)
    stopping = d.notifications(until=b"STOPPING=1")
    assert any(b"STATUS=draining" in m for m in stopping)
    assert d.proc.wait(60) == 0


def test_ready_carries_a_status_line(
        make_config: Callable[..., dict[str, Any]], state_dir: Path) -> None:
    notify_path = state_dir.parent / "own.notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(120)
        d = start_daemon(make_config(), state_dir=state_dir, expect_ready=False,
                         env={"NOTIFY_SOCKET": str(notify_path)})
        try:
            message = notify.recv(4096)
            assert message.startswith(b"READY=1\nSTATUS="), message
            status = message.split(b"STATUS=", 1)[1]
            # DESIGN.md: the one-line state names the loaded models and the sync state.
            assert b"models" in status and b"sync" in status, status
        finally:
            assert d.stop() == 0


def test_no_watchdog_task_without_systemd_asking(edged: Start) -> None:
    d = edged()
    assert "systemd watchdog" not in d.log()


@pytest.mark.parametrize("env", [{"WATCHDOG_USEC": "0"},
                                 {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}])
def test_no_watchdog_for_a_zero_period_or_another_pid(edged: Start, env: dict[str, str]) -> None:
    d = edged({}, env=env)
    assert d.stop() == 0
    assert "systemd watchdog" not in d.log()


def test_socket_activation_serves_the_inherited_socket(
        make_config: Callable[..., dict[str, Any]], state_dir: Path, short_tmp: Path) -> None:
    activator = _which("systemd-socket-activate")
    inherited = short_tmp / "activated.sock"
    config = make_config()
    config_path = short_tmp / "activated.toml"
    config_path.write_text(dump_toml(config))
    proc = subprocess.Popen(
        [activator, "-l", str(inherited), "-E", f"PYTHONPATH={REPO}",
         sys.executable, "-m", "edged", "serve", "--config", str(config_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        assert proc.stderr is not None
        assert b"Listening on" in proc.stderr.readline()  # systemd-socket-activate bound it
        # The first connection starts the daemon, which answers on the inherited socket.
        assert Client(inherited, timeout=120).get("/health")["status"] == "ok"
        assert not Path(config["daemon"]["socket"]).exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert inherited.exists(), "the activated daemon removed a socket systemd owns"
        # After the exec the daemon's stderr is the activator's: the same pipe.
        assert "listening on an inherited socket" in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_an_inherited_tcp_socket_is_refused(
        make_config: Callable[..., dict[str, Any]], short_tmp: Path) -> None:
    with socket.socket() as probe:  # a free local port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config_path = short_tmp / "tcp.toml"
    config_path.write_text(dump_toml(make_config()))
    proc = subprocess.Popen(
        [_which("systemd-socket-activate"), "-l", f"127.0.0.1:{port}",
         sys.executable, "-m", "edged", "serve", "--config", str(config_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        assert proc.stderr is not None
        assert b"Listening on" in proc.stderr.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: edged\r\n\r\n")
            try:
                answer = conn.recv(4096)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", f"a TCP client was served: {answer!r}"
        assert proc.wait(60) == 1
        assert b"is not a Unix stream socket" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _which(name: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/bin:/bin")
    assert found, f"{name} is not installed (Debian package systemd; .ci/run installs it)"
    return found
