"""Each kind of tampering is found, and named by the first bad seq."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.audit.frames import list_segments
from edged.audit.keys import init_keys, load_keys
from edged.audit.verify import Report, verify
from tests.audit.helpers import frame_of, write_log
from tests.edgedtest import cli, short_tmpdir

# daemon.start is seq 1, events are seqs 2..81, daemon.stop is 82.
EVENTS = 80
LAST = EVENTS + 2


@pytest.fixture(scope="module")
def pristine() -> Iterator[Path]:
    folder = short_tmpdir()
    write_log(folder / "st", EVENTS)
    yield folder / "st"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def state(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "st"
    shutil.copytree(pristine, copy)
    return copy


def check(state: Path) -> Report:
    return verify(state / "audit", load_keys(state / "keys", need_device=False))


def cut_bytes(path: Path, start: int, end: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:start] + data[end:])


def test_intact_log_verifies(state: Path) -> None:
    report = check(state)
    assert report.ok, report
    assert report.records == LAST
    assert report.checkpoints >= LAST // 10
    assert len(list_segments(state / "audit")) >= 3  # 4 KiB segments: the chain spans files


def test_bit_flip(state: Path) -> None:
    path, _start, end = frame_of(state, 37)
    data = bytearray(path.read_bytes())
    data[end - 20] ^= 0x04
    path.write_bytes(bytes(data))
    report = check(state)
    assert not report.ok
    assert report.first_bad is not None
    assert report.first_bad.seq == 37
    assert "does not authenticate" in report.first_bad.problem
    assert report.records == 36


def test_deleted_record(state: Path) -> None:
    path, start, end = frame_of(state, 37)
    cut_bytes(path, start, end)
    report = check(state)
    assert report.first_bad is not None
    assert report.first_bad.seq == 37
    assert "expected seq 37, found seq 38" in report.first_bad.problem


def test_swapped_records(state: Path) -> None:
    path, a_start, a_end = frame_of(state, 37)
    path_b, b_start, b_end = frame_of(state, 38)
    assert path == path_b and a_end == b_start
    data = path.read_bytes()
    path.write_bytes(data[:a_start] + data[b_start:b_end] + data[a_start:a_end] + data[b_end:])
    report = check(state)
    assert report.first_bad is not None
    assert report.first_bad.seq == 37
    assert "reordered" in report.first_bad.problem


def test_truncation_behind_a_checkpoint(state: Path) -> None:
    path, start, _ = frame_of(state, 65)
    segments = [p for _, p in list_segments(state / "audit")]
    for later in segments[segments.index(path) + 1:]:
        later.unlink()
    with path.open("r+b") as f:
        f.truncate(start)
    report = check(state)
    assert report.first_bad is not None
    assert report.first_bad.seq == 65
    assert "cut off" in report.first_bad.problem
    assert report.records == 64


def test_missing_segment(state: Path) -> None:
    segments = list_segments(state / "audit")
    first, middle = segments[1]
    middle.unlink()
    report = check(state)
    assert report.first_bad is not None
    assert report.first_bad.seq == first
    assert "missing" in report.first_bad.problem
    assert report.first_bad.segment == segments[2][1].name


def test_forged_checkpoint_signature(state: Path) -> None:
    path = state / "audit" / "checkpoints"
    lines = path.read_text().splitlines()
    forged = json.loads(lines[1])
    forged["seq"] += 1
    lines[1] = json.dumps(forged)
    path.write_text("\n".join(lines) + "\n")
    report = check(state)
    assert report.first_bad is not None
    assert "signature does not verify" in report.first_bad.problem


def test_torn_tail_is_reported(state: Path) -> None:
    _, last = list_segments(state / "audit")[-1]
    with last.open("ab") as f:
        f.write((500).to_bytes(4, "big") + b"\x01" + bytes(40))
    report = check(state)
    assert report.first_bad is not None
    assert report.first_bad.seq == LAST + 1
    assert "incomplete frame" in report.first_bad.problem


def test_cli_verify_names_the_first_bad_seq(state: Path) -> None:
    ok = cli("audit", "verify", "--state-dir", str(state))
    assert ok.returncode == 0, ok.stderr
    assert f"{LAST} records" in ok.stdout
    path, start, end = frame_of(state, 12)
    cut_bytes(path, start, end)
    bad = cli("audit", "verify", "--state-dir", str(state))
    assert bad.returncode == 65
    assert "seq 12" in bad.stderr and "expected seq 12, found seq 13" in bad.stderr
    as_json = json.loads(cli("audit", "verify", "--state-dir", str(state), "--json").stdout)
    assert as_json["first_bad"]["seq"] == 12 and as_json["ok"] is False


def test_wrong_key_is_a_clear_error(state: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-keys"
    init_keys(other)
    shutil.copy(other / "audit.key", state / "keys" / "audit.key")
    report = check(state)
    assert report.first_bad is not None and report.first_bad.seq == 1
    assert "not in the keys folder" in report.first_bad.problem
    export = cli("audit", "export", "--state-dir", str(state))
    assert export.returncode == 1
    assert "is not in the keys folder" in export.stderr and "audit record 1" in export.stderr


def test_export_filters(state: Path) -> None:
    out = cli("audit", "export", "--state-dir", str(state), "--kind", "test.event")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["data"]["i"] for e in events] == list(range(EVENTS))
    assert [e["seq"] for e in events] == list(range(2, EVENTS + 2))
    kinds = {json.loads(line)["kind"] for line in
             cli("audit", "export", "--state-dir", str(state)).stdout.splitlines()}
    assert kinds == {"daemon.start", "test.event", "daemon.stop"}
    later = cli("audit", "export", "--state-dir", str(state), "--since", "2999-01-01")
    assert later.returncode == 0 and later.stdout == ""
    recent = cli("audit", "export", "--state-dir", str(state), "--since", "1h")
    assert len(recent.stdout.splitlines()) == LAST
    bad = cli("audit", "export", "--state-dir", str(state), "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr
