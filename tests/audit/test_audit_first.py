"""Audit before effect: a request that may take effect is recorded before its handler runs.

A header no record can hold is refused with 400 before anything happens, and when the
audit log cannot write, no route takes effect: a model stays loaded, no ticket is made, no
stream starts, no config is applied.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.agents.conftest import agents_config
from tests.api.raw import RawResponse, request
from tests.audit.test_daemon_audit import exported
from tests.edgedtest import RunningDaemon, deep_merge, running, short_tmpdir
from tests.remote.fleet import bundle, pushed_doc, trust

MODEL = "gemma3-270m"
BAD_ID = {"X-Request-Id": b"req-\xff\xfe"}
ESCALATE = {"message": "I have chest pain, I need a person"}
CHAT = {"model": MODEL, "stream": True, "max_tokens": 4,
        "messages": [{"role": "user", "content": "Say hi"}]}


def post(d: RunningDaemon, route: str, body: bytes | dict[str, Any] = b"",
         headers: dict[str, bytes] | None = None) -> RawResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(d.socket, "POST", route, body=raw, headers=headers, timeout=120)


def loaded(d: RunningDaemon) -> set[str]:
    return set(d.client.get("/health")["models"]["loaded"])


def tickets(state: Path) -> int:
    with closing(sqlite3.connect(state / "edged.db")) as db:
        return int(db.execute("SELECT count(*) FROM outbox WHERE kind = 'ticket'").fetchone()[0])


def config_for(state: Path, key: Ed25519PrivateKey) -> dict[str, Any]:
    trust(state / "keys", key)
    return agents_config(state, model=False)


@pytest.fixture(scope="module")
def fleet_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def daemon(fleet_key: Ed25519PrivateKey) -> Iterator[RunningDaemon]:
    folder = short_tmpdir()
    try:
        with running(config_for(folder / "st", fleet_key), folder / "st") as d:
            yield d
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def assert_bad_header(resp: RawResponse) -> None:
    assert resp.status == 400, resp
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]["code"] == "bad_header"
    assert "x-request-id" in resp.json()["error"]["message"].lower()


def test_a_bad_request_id_unloads_nothing(daemon: RunningDaemon) -> None:
    assert_bad_header(post(daemon, f"/admin/models/{MODEL}/load", headers=BAD_ID))
    assert MODEL not in loaded(daemon)
    assert post(daemon, f"/admin/models/{MODEL}/load").status == 200
    assert_bad_header(post(daemon, f"/admin/models/{MODEL}/unload", headers=BAD_ID))
    assert MODEL in loaded(daemon)


def test_a_bad_request_id_streams_nothing(daemon: RunningDaemon) -> None:
    resp = post(daemon, "/v1/chat/completions", CHAT, headers=BAD_ID)
    assert_bad_header(resp)
    assert b"data:" not in resp.body


def test_a_bad_request_id_makes_no_ticket(daemon: RunningDaemon) -> None:
    before = tickets(daemon.state_dir)
    assert_bad_header(post(daemon, "/v1/agents/clinic/chat", ESCALATE, headers=BAD_ID))
    assert tickets(daemon.state_dir) == before


def test_a_bad_request_id_applies_no_config(daemon: RunningDaemon,
                                           fleet_key: Ed25519PrivateKey) -> None:
    raw = bundle(fleet_key, pushed_doc(daemon.state_dir), 7)
    assert_bad_header(post(daemon, "/admin/config", raw, headers=BAD_ID))
    status = daemon.client.get("/admin/config")
    assert status["highest"] != 7 and status["history"] == []
    assert_bad_header(post(daemon, "/admin/sync", headers=BAD_ID))


@pytest.mark.parametrize("value", [b"", b"x" * 129, b"a\tb", "caf\u00e9".encode()])
def test_request_ids_are_printable_ascii(daemon: RunningDaemon, value: bytes) -> None:
    assert_bad_header(request(daemon.socket, "GET", "/health", headers={"X-Request-Id": value}))


def test_other_headers_must_be_text(daemon: RunningDaemon) -> None:
    resp = request(daemon.socket, "GET", "/health", headers={"X-Thing": b"\xc3\x28"})
    assert (resp.status, resp.json()["error"]["code"]) == (400, "bad_header")
    assert "x-thing" in resp.json()["error"]["message"].lower()


def test_the_record_comes_before_the_effect(daemon: RunningDaemon) -> None:
    resp = post(daemon, "/v1/agents/clinic/chat", ESCALATE, headers={"X-Request-Id": b"t-1"})
    assert resp.status == 200
    events = exported(daemon.state_dir)
    (req,) = [e for e in events if e["kind"] == "api.request"
              and e["data"].get("request_id") == "t-1"]
    assert req["data"]["route"] == "/v1/agents/{name}/chat" and "status" not in req["data"]
    (tool,) = [e for e in events if e["kind"] == "tool.call" and e["seq"] > req["seq"]
               and e["data"].get("tool") == "escalate_to_human"]
    (outcome,) = [e for e in events if e["kind"] == "api.response"
                  and e["data"].get("request_seq") == req["seq"]]
    assert req["seq"] < tool["seq"] < outcome["seq"]
    assert outcome["data"]["status"] == 200 and outcome["data"]["request_id"] == "t-1"


def test_a_record_too_large_to_write_refuses_the_request(tmp_path: Path) -> None:
    folder = short_tmpdir()
    state = folder / "st"
    config = deep_merge(agents_config(state, model=False),
                        {"daemon": {"max_body": "4MiB"}, "audit": {"log_prompts": True}})
    try:
        with running(config, state) as d:
            before = tickets(state)
            big = {"message": ESCALATE["message"] + " " + "x" * 1_500_000}
            resp = post(d, "/v1/agents/clinic/chat", big)
            assert resp.status == 400 and "more than" in resp.json()["error"]["message"]
            assert tickets(state) == before
            assert d.client.get("/health")["status"] == "ok"
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture
def full_audit_disk(fleet_key: Ed25519PrivateKey) -> Iterator[tuple[RunningDaemon, Path]]:
    """A daemon whose audit folder is a small tmpfs, filled up once it is ready."""
    folder = short_tmpdir()
    state = folder / "st"
    audit = state / "audit"
    audit.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(audit)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        subprocess.run(["rm", "-rf", str(folder)], check=False)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with running(config_for(state, fleet_key), state) as d:
            assert post(d, f"/admin/models/{MODEL}/load").status == 200
            fd = os.open(audit / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                with pytest.raises(OSError):
                    while True:
                        os.write(fd, os.urandom(4096))
            finally:
                os.close(fd)
            # The segment's last page may still have room: write until it has none.
            for _ in range(100):
                if request(d.socket, "GET", "/health").status == 503:
                    break
            yield d, state
    finally:
        subprocess.run(["umount", str(audit)], check=False)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def test_nothing_takes_effect_when_the_audit_cannot_write(
        full_audit_disk: tuple[RunningDaemon, Path], fleet_key: Ed25519PrivateKey) -> None:
    d, state = full_audit_disk
    before = tickets(state)
    refusals = [
        post(d, f"/admin/models/{MODEL}/unload"),
        post(d, "/v1/chat/completions", CHAT),
        post(d, "/v1/agents/clinic/chat", ESCALATE),
        post(d, "/admin/config", bundle(fleet_key, pushed_doc(state), 3)),
    ]
    for resp in refusals:
        assert resp.status == 503, resp
        assert resp.json()["error"]["code"] == "audit_failed"
        assert b"data:" not in resp.body
    assert tickets(state) == before
    assert not (state / "config" / "v3.toml").exists()
    assert f"unloaded {MODEL}" not in d.log()



def test_a_client_leaving_does_not_cut_an_effect_short(daemon: RunningDaemon) -> None:
    """A route with an effect runs to its end when its client leaves: the model loads, and
    both records are there, the outcome a 499."""
    if MODEL in loaded(daemon):
        daemon.client.post(f"/admin/models/{MODEL}/unload", {})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(daemon.socket))
        s.sendall(f"POST /admin/models/{MODEL}/load HTTP/1.1\r\nHost: edged\r\n"
                  "X-Request-Id: left-1\r\nContent-Length: 0\r\n\r\n".encode())
        for _ in range(10_000):  # until the load is under way (each look is a request)
            states = [m["state"] for m in daemon.client.get("/admin/ps")["models"]]
            if states:
                break
        assert states == ["loading"]
    while (ps := daemon.client.get("/admin/ps"))["models"][0]["state"] == "loading":
        daemon.client.get(f"/admin/ps?generation={ps['generation']}&wait=60")
    assert ps["models"][0]["state"] == "loaded"
    for _ in range(20):  # the outcome is recorded just after the load ends
        events = exported(daemon.state_dir, "--kind", "api.request", "--kind", "api.response")
        (req,) = [e for e in events if e["data"].get("request_id") == "left-1"
                  and e["kind"] == "api.request"]
        outcome = [e for e in events if e["data"].get("request_seq") == req["seq"]]
        if outcome:
            break
    assert [e["data"]["status"] for e in outcome] == [499]
