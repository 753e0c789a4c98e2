"""AuditLog in-process: durable group commit, total order, recovery, rotation."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edged.audit.export import export
from edged.audit.frames import list_segments
from edged.audit.keys import load_keys, rotate_audit_key
from edged.audit.verify import verify
from edged.errors import BadRequest, Unavailable
from tests.audit.helpers import append_events, fill_log, frame_of, frames, open_log
from tests.edgedtest import REPO


def events(state: Path) -> list[dict[str, object]]:
    return list(export(state / "audit", load_keys(state / "keys", need_device=False)))


def verified(state: Path) -> int:
    report = verify(state / "audit", load_keys(state / "keys", need_device=False))
    assert report.ok, report
    return report.records


async def test_concurrent_writers_keep_one_total_order(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    writers, each = 40, 50

    async def writer(log_: object, w: int) -> list[int]:
        seqs = []
        for i in range(each):
            seqs.append(await log.append("test.order", f"w{w}", {"w": w, "i": i}))
        return seqs

    async with open_log(tmp_path, registry) as log:
        results = await asyncio.gather(*(writer(log, w) for w in range(writers)))
    everything = sorted(s for seqs in results for s in seqs)
    assert everything == list(range(2, 2 + writers * each))  # after daemon.start, no gaps
    for seqs in results:
        assert seqs == sorted(seqs)  # each writer's appends in its own order
    by_seq = {e["seq"]: e for e in events(tmp_path)}
    for w, seqs in enumerate(results):
        assert [by_seq[s]["data"] for s in seqs] == [{"w": w, "i": i} for i in range(each)]
    commits = registry.get_sample_value("edged_audit_commits_total")
    appends = registry.get_sample_value("edged_audit_appends_total")
    assert appends == writers * each + 2
    assert commits is not None and commits < appends / 4  # appends shared their fsyncs
    assert verified(tmp_path) == writers * each + 2


async def test_segments_roll_and_chain_across_files(tmp_path: Path) -> None:
    async with open_log(tmp_path) as log:
        await append_events(log, 300)
    segments = list_segments(tmp_path / "audit")
    assert len(segments) > 5
    assert all(p.stat().st_size <= 4096 for _, p in segments)
    assert [first for first, _ in segments] == sorted({f.seq for p, f in frames(tmp_path)
                                                       if f.offset == 8})
    assert verified(tmp_path) == 302


async def test_torn_tail_is_cut_recorded_and_kept(tmp_path: Path) -> None:
    await fill_log(tmp_path, 10)
    _, last = list_segments(tmp_path / "audit")[-1]
    torn = (300).to_bytes(4, "big") + b"\x01" + bytes(60)
    with last.open("ab") as f:
        f.write(torn)
    async with open_log(tmp_path) as log:
        seq = await log.append("test.after", "test", {})
    recovered = [e for e in events(tmp_path) if e["kind"] == "audit.recovery"]
    assert len(recovered) == 1
    data = recovered[0]["data"]
    assert isinstance(data, dict)
    assert data["bytes_cut"] == len(torn) and data["last_good_seq"] == 12
    assert "incomplete frame" in data["problem"]
    assert (tmp_path / "audit" / data["saved_to"]).read_bytes() == torn
    assert seq == 15  # 12 kept, recovery 13, daemon.start 14
    assert [e["data"] for e in events(tmp_path) if e["kind"] == "test.event"] == [
        {"i": i} for i in range(10)]
    assert verified(tmp_path) == 16


async def test_whole_frame_that_does_not_authenticate_is_cut(tmp_path: Path) -> None:
    await fill_log(tmp_path, 3)
    _, last = list_segments(tmp_path / "audit")[-1]
    good = last.read_bytes()
    _, final = frames(tmp_path)[-1]
    forged = bytearray(final.data)
    forged[20] ^= 1  # a copy of the last frame as seq 6, with a damaged nonce
    forged[9:17] = (6).to_bytes(8, "big")
    last.write_bytes(good + bytes(forged))
    async with open_log(tmp_path):
        pass
    recovery = [e for e in events(tmp_path) if e["kind"] == "audit.recovery"]
    assert recovery and "does not authenticate" in str(recovery[0]["data"])
    assert verified(tmp_path) == 8


async def test_rotation_keeps_the_chain_and_old_records(tmp_path: Path) -> None:
    await fill_log(tmp_path, 5)
    old, new = rotate_audit_key(tmp_path / "keys")
    assert (tmp_path / "keys" / f"audit-{old:08x}.key").exists()
    async with open_log(tmp_path) as log:
        await log.append("test.new_key", "test", {})
    kinds = [e["kind"] for e in events(tmp_path)]
    assert kinds[:7] == ["daemon.start", *["test.event"] * 5, "daemon.stop"]
    assert kinds[7:] == ["audit.key_rotated", "daemon.start", "test.new_key", "daemon.stop"]
    rotated = next(e for e in events(tmp_path) if e["kind"] == "audit.key_rotated")
    assert rotated["data"] == {"from_key": f"{old:08x}", "to_key": f"{new:08x}"}
    key_ids = {f.key_id for _, f in frames(tmp_path)}
    assert key_ids == {old, new}
    assert verified(tmp_path) == 11


async def test_bad_event_fails_alone(tmp_path: Path) -> None:
    async with open_log(tmp_path) as log:
        good = asyncio.create_task(log.append("test.ok", "test", {"n": 1}))
        with pytest.raises(BadRequest, match="not JSON"):
            await log.append("test.bad", "test", {("tuple", "key"): 1})
        assert await log.append("test.path", "test", {"p": Path("/x/y")}) == 3
        with pytest.raises(BadRequest, match="bytes, more than"):
            await log.append("test.big", "test", {"x": "a" * (2 * 1024 * 1024)})
        assert await good == 2
    assert [e["kind"] for e in events(tmp_path)] == ["daemon.start", "test.ok", "test.path",
                                                     "daemon.stop"]
    assert events(tmp_path)[2]["data"] == {"p": "/x/y"}
    with pytest.raises(Unavailable, match="closed"):
        await log.append("test.late", "test", {})


async def test_checkpoints_are_signed_and_counted(tmp_path: Path) -> None:
    async with open_log(tmp_path, checkpoint_every=25) as log:
        for i in range(100):
            await log.append("test.event", "test", {"i": i})
        health = log.health()
    lines = [json.loads(x) for x in (tmp_path / "audit" / "checkpoints").read_text().splitlines()]
    assert [cp["seq"] for cp in lines] == [25, 50, 75, 100, 102]  # every 25, and at close
    assert health["seq"] == 101 and "degraded" not in health
    assert verified(tmp_path) == 102


async def test_damage_inside_the_log_is_reported_not_cut(tmp_path: Path) -> None:
    await fill_log(tmp_path, 8, segment_bytes=1 << 20)
    before = {(f.seq, bytes(f.data)) for _, f in frames(tmp_path)}
    path, _, end = frame_of(tmp_path, 4)
    data = bytearray(path.read_bytes())
    data[end - 5] ^= 0x80
    path.write_bytes(bytes(data))
    async with open_log(tmp_path, segment_bytes=1 << 20) as log:
        health = log.health()
    assert not list((tmp_path / "audit").glob("torn-*"))
    after = [(f.seq, bytes(f.data)) for _, f in frames(tmp_path)]
    assert len(after) == len(before) + 3  # damage_found, daemon.start, daemon.stop
    assert health["damage"]["seq"] == 4 and "degraded" not in health
    assert "does not authenticate" in health["damage"]["problem"]
    report = verify(tmp_path / "audit", load_keys(tmp_path / "keys", need_device=False))
    assert report.first_bad is not None and report.first_bad.seq == 4


async def test_garbage_tail_with_an_unknown_key_id_is_cut(tmp_path: Path) -> None:
    await fill_log(tmp_path, 3)
    _, last = list_segments(tmp_path / "audit")[-1]
    _, final = frames(tmp_path)[-1]
    garbage = bytearray(final.data)
    garbage[5:9] = b"\xde\xad\xbe\xef"  # key id
    garbage[9:17] = (final.seq + 1).to_bytes(8, "big")
    with last.open("ab") as f:
        f.write(bytes(garbage))
    async with open_log(tmp_path):
        pass
    recovery = [e for e in events(tmp_path) if e["kind"] == "audit.recovery"]
    assert len(recovery) == 1 and "unknown key deadbeef" in str(recovery[0]["data"])
    assert verified(tmp_path) == 8


_FULL_DISK = """
import asyncio, json, resource, signal, sys
from pathlib import Path
from edged.errors import Unavailable
from tests.audit.helpers import open_log

async def main():
    state = Path(sys.argv[1])
    acked, errors = [], []
    async with open_log(state, segment_bytes=1 << 30) as log:
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, resource.RLIM_INFINITY))
        for i in range(400):
            try:
                acked.append(await log.append("test.event", "test", {"i": i, "pad": "x" * 200}))
            except Unavailable as e:
                errors.append(e.code)
        health = log.health()
    print(json.dumps({"acked": acked, "errors": errors, "health": health}))

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
asyncio.run(main())
"""


def test_a_failed_write_refuses_appends_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    """A file size limit stands in for a full disk: writes past it fail with EFBIG."""
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert 0 < len(result["acked"]) < 400
    assert set(result["errors"]) == {"audit_failed"}
    assert len(result["acked"]) + len(result["errors"]) == 400
    assert result["health"]["degraded"] is True and "too large" in result["health"]["error"]
    asyncio.run(fill_log(tmp_path, 0))  # the next start recovers what the limit tore
    got = [e["data"]["i"] for e in events(tmp_path) if e["kind"] == "test.event"]
    assert got[:len(result["acked"])] == list(range(len(result["acked"])))
    assert verified(tmp_path) >= len(result["acked"]) + 3


async def test_a_cancelled_caller_still_gets_its_record_written(tmp_path: Path) -> None:
    async with open_log(tmp_path) as log:
        waiting = asyncio.create_task(log.append("test.cancelled", "test", {}))
        others = asyncio.gather(*(log.append("test.other", "test", {"i": i}) for i in range(5)))
        await asyncio.sleep(0)  # let it queue: the cancel then hits its wait, not the queueing
        waiting.cancel()
        assert await others == [3, 4, 5, 6, 7]
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert [e["kind"] for e in events(tmp_path)][1:3] == ["test.cancelled", "test.other"]
