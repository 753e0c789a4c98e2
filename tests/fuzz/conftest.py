"""One real daemon for the fuzz tests, and the checks every fuzz test ends with.

Agents route by words (no generator); the bundled model is in the catalog with a short
context, so the rare generated request that is valid loads and answers quickly.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings

from tests.agents.conftest import agents_config
from tests.api.raw import RawResponse
from tests.edgedtest import RunningDaemon, cli, deep_merge, running, short_tmpdir
from tests.remote.fleet import trust

# Bounded in count (and so in time): the whole suite runs in a few minutes on 2 cores.
settings.register_profile("edged-fuzz", max_examples=int(os.environ.get("EDGED_FUZZ", "100")),
                          deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
FUZZ = settings.get_profile("edged-fuzz")
MODEL = "gemma3-270m"
# 5xx a client may legitimately see, by error code
ALLOWED_5XX = {"http_version_not_supported", "too_many_connections", "draining",
               "model_too_large", "budget", "deadline_exceeded", "unavailable",
               "sync_disabled"}


@pytest.fixture(scope="package")
def fuzzed() -> Iterator[RunningDaemon]:
    folder = short_tmpdir()
    os.chmod(folder, 0o755)
    state = folder / "st"
    trust(state / "keys", Ed25519PrivateKey.generate())
    config = deep_merge(agents_config(state, model=False), {
        "daemon": {"socket": str(folder / "s.sock"), "max_body": "64KiB",
                   "read_timeout": "1s", "idle_timeout": "2s"},
        "models": {MODEL: {"context": 256}},
        "sync": {"max_bytes": "1MiB"}})
    try:
        with running(config, state) as d:
            yield d
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_answer(resp: RawResponse | None, what: object) -> None:
    """No server error; every error in the envelope."""
    if resp is None:
        return  # closed without an answer: a request that never completed
    assert resp.status != 500 and resp.status < 600, (what, resp)
    if resp.status >= 400:
        assert resp.headers.get("content-type", "").startswith("application/json"), (what, resp)
        error = json.loads(resp.body)["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        if resp.status >= 500:
            assert error["code"] in ALLOWED_5XX, (what, resp)


def export(d: RunningDaemon) -> list[dict[str, Any]]:
    out = cli("audit", "export", "--state-dir", str(d.state_dir))
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.split("\n") if line]


def check_daemon(d: RunningDaemon) -> None:
    """After a fuzz run: still answering, the chain verifies, no traceback, and every
    request that may have taken effect has both its records."""
    assert d.proc.poll() is None, d.log()[-4000:]
    assert d.client.get("/health")["status"] in ("ok", "degraded")
    assert d.client.get("/admin/audit/verify")["ok"] is True
    log = d.log()
    assert "Traceback" not in log, log[log.find("Traceback") - 2000:][:6000]
    events = export(d)
    first = {e["seq"] for e in events if e["kind"] == "api.request" and "status" not in e["data"]}
    answered = {e["data"]["request_seq"] for e in events if e["kind"] == "api.response"}
    assert first <= answered, f"{len(first - answered)} requests without an outcome"
    # each effect is recorded inside the request that made it: between that request's
    # api.request (written before its handler ran) and its api.response
    spans = {"tool.call": _spans(events, "/v1/agents/{name}/chat"),
             "config.": _spans(events, "/admin/config")}
    for e in events:
        kind = "config." if e["kind"].startswith("config.") else e["kind"]
        if kind in spans:
            assert any(a < e["seq"] < b for a, b in spans[kind]), e


def _spans(events: list[dict[str, Any]], route: str) -> list[tuple[int, int]]:
    outcome = {e["data"]["request_seq"]: e["seq"] for e in events if e["kind"] == "api.response"}
    return [(e["seq"], outcome.get(e["seq"], 1 << 62)) for e in events
            if e["kind"] == "api.request" and e["data"].get("route") == route]
