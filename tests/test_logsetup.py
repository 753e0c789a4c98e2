"""Log formats of the real daemon: text, journal (no timestamp of its own), JSON lines, and
one warning line, not a traceback, for a malformed HTTP request."""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.edgedtest import start_daemon

# A timestamp at the start of a line, after the journal's <N> prefix and logger name if any.
STAMP = re.compile(r"(<[0-7]>[\w.]+: )?\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")


def test_journal_format_has_no_timestamp_of_its_own(
        make_config: Callable[..., dict[str, Any]], state_dir: Path) -> None:
    log_path = state_dir.parent / f"{state_dir.name}.log"
    log_path.touch()
    st = os.stat(log_path)  # stderr is this file: pretend it is the journal stream
    d = start_daemon(make_config({"logging": {"format": "auto"}}), state_dir=state_dir,
                     env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert d.stop() == 0
    lines = [ln for ln in d.log().splitlines() if ln]
    assert any(ln.startswith("<6>edged.daemon: edged ready on") for ln in lines), lines
    assert all(re.match(r"<[0-7]>", ln) for ln in lines), lines
    # The text format's own timestamp, which journald would duplicate, is not there.
    assert not any(STAMP.match(ln) for ln in lines), lines


def test_journal_stream_of_another_file_keeps_plain_text(
        make_config: Callable[..., dict[str, Any]], state_dir: Path) -> None:
    d = start_daemon(make_config({"logging": {"format": "auto"}}), state_dir=state_dir,
                     env={"JOURNAL_STREAM": "1:1"})
    assert d.stop() == 0
    assert all(STAMP.match(ln) for ln in d.log().splitlines() if ln.startswith("20"))
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", d.log())


def test_json_log_lines(make_config: Callable[..., dict[str, Any]], state_dir: Path) -> None:
    d = start_daemon(make_config({"logging": {"format": "json"}}), state_dir=state_dir)
    assert d.stop() == 0
    records = [json.loads(ln) for ln in d.log().splitlines() if ln]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["message"] == "edged stopped" for r in records)


def test_a_malformed_http_request_is_one_warning_line(
        make_config: Callable[..., dict[str, Any]], state_dir: Path) -> None:
    d = start_daemon(make_config(), state_dir=state_dir)
    for raw in (b"GET /health HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                b"GET /health HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(d.socket))
            conn.sendall(raw)
            conn.settimeout(30)
            assert conn.recv(4096).startswith(b"HTTP/1.0 400 ")
    assert d.client.get("/health")["status"] == "ok"
    assert d.stop() == 0
    log = d.log()
    assert log.count("WARNING aiohttp.server: malformed HTTP request: ") == 2, log
    assert "Traceback" not in log
