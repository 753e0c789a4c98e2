"""The real daemon: every request leaves a durable record; verify over the API; the log
survives SIGKILL under load with every acknowledged record in it."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import sqlite3
import struct
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edged.audit.checkpoints import Checkpoint
from edged.audit.frames import list_segments
from edged.client import ApiError
from tests.api.curl import NO_ROLE_USER, curl
from tests.audit.helpers import frame_of
from tests.edgedtest import RunningDaemon, base_config, cli, deep_merge, running, short_tmpdir


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningDaemon]:
    folder = short_tmpdir()
    os.chmod(folder, 0o755)
    config = deep_merge(base_config(folder / "st"), {"daemon": {
        "socket": str(folder / "s.sock"), "socket_mode": "0666",
        "admin_groups": ["edged-admin-test"]}})
    try:
        with running(config, folder / "st") as d:
            yield d
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def exported(state: Path, *extra: str) -> list[dict[str, Any]]:
    out = cli("audit", "export", "--state-dir", str(state), *extra)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_requests_are_recorded_before_they_are_answered(daemon: RunningDaemon) -> None:
    health = daemon.client.get("/health")
    assert health["audit"]["seq"] >= 1
    assert get_with_id(daemon, "/health", "req-one") == 200
    records = [e for e in exported(daemon.state_dir, "--kind", "api.request")
               if e["data"].get("request_id") == "req-one"]
    assert len(records) == 1
    data = records[0]["data"]
    assert data["route"] == "/health" and data["status"] == 200 and data["method"] == "GET"
    assert data["uid"] == os.getuid() and records[0]["actor"] == f"uid:{os.getuid()}"
    assert data["duration_ms"] >= 0


def test_role_refusals_are_recorded(daemon: RunningDaemon) -> None:
    assert curl(daemon, "/admin/audit/verify", user=NO_ROLE_USER)[0] == 403
    uid = pwd.getpwnam(NO_ROLE_USER).pw_uid
    refused = exported(daemon.state_dir, "--kind", "api.refused")
    assert any(e["data"]["uid"] == uid and e["data"]["route"] == "/admin/audit/verify"
               and e["data"]["status"] == 403 for e in refused)


def test_prompts_stay_out_of_the_log(daemon: RunningDaemon) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "SECRET-PROMPT-42"}]}
    # an unknown model: the handler reads the body, then refuses it
    with pytest.raises(ApiError) as refused:
        daemon.client.post("/v1/chat/completions", body)
    assert refused.value.status == 404
    records = exported(daemon.state_dir, "--kind", "api.request", "--kind", "api.response")
    mine = [e for e in records if e["data"].get("model") == "tiny"]
    assert mine and mine[-1]["kind"] == "api.request" and "status" not in mine[-1]["data"]
    outcome = [e for e in records if e["data"].get("request_seq") == mine[-1]["seq"]]
    assert [e["data"]["status"] for e in outcome] == [404]
    assert "SECRET-PROMPT-42" not in json.dumps(records)
    for _, segment in list_segments(daemon.state_dir / "audit"):
        assert b"SECRET-PROMPT-42" not in segment.read_bytes()


def test_verify_over_the_api_and_the_cli(daemon: RunningDaemon) -> None:
    report = daemon.client.get("/admin/audit/verify")
    assert report["ok"] is True and report["first_bad"] is None
    assert report["records"] >= 3
    out = cli("audit", "verify", "--daemon", "--json", socket_path=daemon.socket)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ok"] is True


def get_with_id(d: RunningDaemon, path: str, request_id: str) -> int:
    async def go() -> int:
        connector = aiohttp.UnixConnector(path=str(d.socket))
        async with aiohttp.ClientSession(connector=connector) as s, \
                s.get(f"http://edged{path}", headers={"X-Request-Id": request_id}) as r:
            return r.status
    return asyncio.run(go())


async def hammer(socket_path: Path, stop_after: int, kill: Any, workers: int = 48
                 ) -> set[str]:
    """Many concurrent clients GET /health with ids; SIGKILL the daemon once ``stop_after``
    answers came back, while the rest are in flight. Returns the acknowledged ids."""
    acked: set[str] = set()
    counter = iter(range(10**9))

    async def client(s: aiohttp.ClientSession) -> None:
        while True:
            rid = f"k{next(counter)}"
            try:
                async with s.get("http://edged/health", headers={"X-Request-Id": rid}) as r:
                    await r.read()
                    if r.status != 200:
                        return
            except (aiohttp.ClientError, OSError):
                return
            acked.add(rid)
            if len(acked) == stop_after:
                kill()

    connector = aiohttp.UnixConnector(path=str(socket_path), limit=workers)
    async with aiohttp.ClientSession(connector=connector) as s:
        await asyncio.gather(*(client(s) for _ in range(workers)))
    return acked


def test_sigkill_under_load_loses_nothing_acknowledged(short_tmp: Path) -> None:
    state = short_tmp / "st"
    config = base_config(state)
    config["audit"] = {"checkpoint_every": 200}
    with running(config, state) as d:
        acked = asyncio.run(hammer(d.socket, 1500, lambda: d.proc.send_signal(signal.SIGKILL)))
        assert d.proc.wait(30) == -signal.SIGKILL
    assert len(acked) >= 1500
    # What a write cut by power loss leaves: the start of a frame, not all of it.
    _, last = list_segments(state / "audit")[-1]
    with last.open("ab") as f:
        f.write(struct.pack(">IBIQ", 400, 1, 0, 10**6) + os.urandom(40))
    with running(config, state) as again:
        report = again.client.get("/admin/audit/verify")
        assert report["ok"], report
    events = exported(state)
    recorded = {e["data"].get("request_id") for e in events if e["kind"] == "api.request"}
    assert acked <= recorded, f"{len(acked - recorded)} acknowledged requests lost"
    recovery = [e for e in events if e["kind"] == "audit.recovery"]
    assert len(recovery) == 1
    assert recovery[0]["data"]["bytes_cut"] == 57
    assert "incomplete frame" in recovery[0]["data"]["problem"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert cli("audit", "verify", "--state-dir", str(state)).returncode == 0


def test_prompts_are_recorded_when_configured(short_tmp: Path) -> None:
    state = short_tmp / "st"
    config = deep_merge(base_config(state), {"audit": {"log_prompts": True}})
    messages = [{"role": "user", "content": "PROMPT-OK-7"}]
    with running(config, state) as d, pytest.raises(ApiError, match="tiny"):
        d.client.post("/v1/chat/completions", {"model": "tiny", "messages": messages})
    records = [e for e in exported(state, "--kind", "api.request")
               if e["data"].get("route") == "/v1/chat/completions"]
    assert records[-1]["data"]["prompt_messages"] == messages
    for _, segment in list_segments(state / "audit"):
        assert b"PROMPT-OK-7" not in segment.read_bytes()  # encrypted all the same


def test_checkpoints_are_kept_and_queued_for_the_cloud(short_tmp: Path) -> None:
    state = short_tmp / "st"
    config = deep_merge(base_config(state), {"audit": {"checkpoint_every": 5}})
    with running(config, state) as d:
        for _ in range(12):
            d.client.get("/health")
        assert d.stop() == 0
    lines = (state / "audit" / "checkpoints").read_text().splitlines()
    local = [json.loads(line) for line in lines]
    with closing(sqlite3.connect(state / "edged.db")) as db:
        rows = db.execute("SELECT key, payload FROM outbox WHERE kind = 'checkpoint' "
                          "ORDER BY id").fetchall()
    queued = [json.loads(payload) for _, payload in rows]
    assert queued == local and len(local) >= 3
    assert rows[0][0] == f"audit-checkpoint:test-box:{local[0]['seq']}:{local[0]['head'][:16]}"
    public = serialization.load_pem_public_key((state / "keys" / "device.pub").read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    assert all(Checkpoint(**cp).signed_by(public) for cp in queued)
    assert local[-1]["seq"] == len(exported(state))  # the last one covers daemon.stop


def test_rotation_on_a_real_daemon(short_tmp: Path) -> None:
    state = short_tmp / "st"
    config = base_config(state)
    with running(config, state) as d:
        d.client.get("/health")
        rotated = cli("keys", "rotate", "--state-dir", str(state), "--json")
        assert rotated.returncode == 0, rotated.stderr
        ids = json.loads(rotated.stdout)
        d.client.get("/health")  # still sealed with the key it started with
    with running(config, state) as again:
        again.client.get("/health")
        assert again.client.get("/health")["audit"]["key"] == ids["current"]
        assert again.client.get("/admin/audit/verify")["ok"] is True
    kinds = [e["kind"] for e in exported(state)]
    assert kinds.count("audit.key_rotated") == 1
    assert kinds.index("audit.key_rotated") == kinds.index("daemon.stop") + 1
    assert cli("audit", "verify", "--state-dir", str(state)).returncode == 0


def test_disabled_audit_writes_nothing_and_needs_no_keys(short_tmp: Path) -> None:
    state = short_tmp / "st"
    config = deep_merge(base_config(state), {"audit": {"enabled": False}})
    with running(config, state) as d:
        assert d.client.get("/health")["status"] == "ok"
        with pytest.raises(ApiError, match="no such route"):
            d.client.get("/admin/audit/verify")
    assert not (state / "audit").exists() and not (state / "keys" / "audit.key").exists()


def test_verify_on_a_running_daemon_names_tampering(short_tmp: Path) -> None:
    state = short_tmp / "st"
    with running(base_config(state), state) as d:
        for _ in range(5):
            d.client.get("/health")
        path, _, end = frame_of(state, 3)
        data = bytearray(path.read_bytes())
        data[end - 1] ^= 0x01
        path.write_bytes(bytes(data))
        report = d.client.get("/admin/audit/verify")
        assert report["ok"] is False and report["records"] == 2
        assert report["first_bad"]["seq"] == 3
        assert report["first_bad"]["segment"] == path.name
        out = cli("audit", "verify", "--daemon", socket_path=d.socket)
        assert out.returncode == 65 and "seq 3" in out.stderr
