"""Agents with tools from outside edged: real MCP servers (the ``mcp`` SDK, over stdio and
Streamable HTTP) and HTTP tools against a local service that can fail, stall, flood and
redirect. Every call goes through the allowlist, the schema check, the timeout and the audit
log, and a failure is a clear reply, never a 500 or a hang."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.edgedtest import (
    MODEL_CACHE,
    RunningDaemon,
    base_config,
    bundled_alias,
    cli,
    deep_merge,
    short_tmpdir,
    start_daemon,
)

SERVER = Path(__file__).parent / "mcp_server.py"
EXAMPLES = """
[intents."rx.check_prescription"]
examples = ["is my prescription ready", "status of prescription 1234567", "prescription check"]
[intents.order_status]
examples = ["where is my web order", "status of order A-1001", "has my order shipped"]
[intents."slowrx.slow"]
examples = ["be slow for 30 seconds", "take your time"]
[intents."crashy.crash"]
examples = ["crash the server now", "fall over"]
[intents."rx.bad_result"]
examples = ["bad result for 1234567", "give me a broken answer"]
[intents.broken]
examples = ["call the broken service", "broken pos"]
[intents.stalled]
examples = ["call the stalled service", "stalled pos"]
[intents.flood]
examples = ["call the flooding service", "flood pos"]
[intents.elsewhere]
examples = ["call the redirecting service", "redirect pos"]
[intents."web.check_prescription"]
examples = ["is my prescription ready", "status of prescription 1234567"]
"""


class Service:
    """The store's POS: a real HTTP server on loopback, in a thread of the test."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.seen: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _app(self) -> web.Application:
        async def order(request: web.Request) -> web.Response:
            self.seen.append(request.headers.get("Authorization", ""))
            number = request.match_info["number"]
            if number == "A-1001":
                return web.json_response({"status": "shipped", "carrier": "DHL"})
            return web.json_response({"error": "no such order"}, status=404)

        async def broken(request: web.Request) -> web.Response:
            return web.json_response({"error": "db down"}, status=500)

        async def stalled(request: web.Request) -> web.Response:
            await asyncio.Event().wait()  # the stand-in's behaviour: an answer that never comes
            return web.json_response({})

        async def flood(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            await resp.prepare(request)
            for _ in range(10 * 16):
                await resp.write(b"x" * 65536)  # 10 MiB
            return resp

        async def elsewhere(request: web.Request) -> web.Response:
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data")

        app = web.Application()
        app.router.add_get("/orders/{number}", order)
        app.router.add_get("/broken", broken)
        app.router.add_get("/stalled", stalled)
        app.router.add_get("/flood", flood)
        app.router.add_get("/elsewhere", elsewhere)
        return app

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self._app())
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.SockSite(runner, self.sock).start())
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()


class McpHttpServer:
    """tests/tools/mcp_server.py over Streamable HTTP, in a thread, on a socket bound
    (and listening) before the daemon starts."""

    def __init__(self) -> None:
        import uvicorn

        sys.path.insert(0, str(SERVER.parent))
        import mcp_server  # type: ignore[import-not-found]

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(mcp_server.app.streamable_http_app(), log_level="warning",
                                lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self.sock])), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


@pytest.fixture(scope="module")
def pos() -> Service:
    service = Service()
    service.start()
    return service


@pytest.fixture(scope="module")
def daemon(pos: Service) -> Iterator[RunningDaemon]:
    tmp = short_tmpdir()
    remote = McpHttpServer()
    remote.start()
    examples = tmp / "examples.toml"
    examples.write_text(EXAMPLES)
    schema = tmp / "order.schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["order_number"],
                                  "properties": {"order_number": {
                                      "type": "string", "description": "web order number"}}}))
    headers = tmp / "pos.headers"
    headers.write_text("Authorization: Bearer s3cret\n")
    headers.chmod(0o600)
    stdio = [sys.executable, str(SERVER)]

    def http_tool(path: str, **extra: Any) -> dict[str, Any]:
        return {"description": "the POS", "url": pos.url(path), "timeout": "1s", **extra}

    state = tmp / "st"
    config = deep_merge(base_config(state), {
        "mcp": {"rx": {"command": stdio, "timeout": "3s", "env": {"TZ": "UTC"}},
                "slowrx": {"command": stdio, "timeout": "1s"},
                "crashy": {"command": stdio},
                "web": {"url": f"http://127.0.0.1:{remote.port}/mcp"}},
        "tools": {"order_status": http_tool("/orders/{order_number}", parameters=str(schema),
                                            summary="Order {order_number}: {status}",
                                            headers_file=str(headers)),
                  "broken": http_tool("/broken"), "stalled": http_tool("/stalled"),
                  "flood": http_tool("/flood"), "elsewhere": http_tool("/elsewhere")},
        "agents": {"counter": {"model": "none", "tools": [
            "rx.check_prescription", "order_status"], "examples_file": str(examples)},
                   "faults": {"model": "none", "tool_timeout": "5s", "examples_file": str(
                       examples), "tools": ["slowrx.slow", "crashy.crash", "rx.bad_result",
                                            "broken", "stalled", "flood", "elsewhere"]},
                   "web": {"model": "none", "tools": ["web.check_prescription"],
                           "examples_file": str(examples)}},
        "models": {"cache_dir": str(MODEL_CACHE), "none": bundled_alias()}})
    d = start_daemon(config, state_dir=state)
    try:
        yield d
    finally:
        d.stop()
        remote.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def chat(d: RunningDaemon, agent: str, message: str) -> dict[str, Any]:
    result: dict[str, Any] = d.client.post(f"/v1/agents/{agent}/chat", {"message": message})
    return result


def only_action(turn: dict[str, Any], tool: str) -> dict[str, Any]:
    assert [a["tool"] for a in turn["actions"]] == [tool], turn
    action: dict[str, Any] = turn["actions"][0]
    return action


def test_an_mcp_tool_over_stdio(daemon: RunningDaemon) -> None:
    turn = chat(daemon, "counter", "what's the status of prescription 1234567?")
    action = only_action(turn, "rx.check_prescription")
    assert action["arguments"] == {"rx_number": "1234567"}
    assert "Prescription 1234567 is ready." in turn["reply"]


def test_an_mcp_tool_over_streamable_http(daemon: RunningDaemon) -> None:
    turn = chat(daemon, "web", "status of prescription 7654321 please")
    only_action(turn, "web.check_prescription")
    assert "7654321 is being filled" in turn["reply"]


def test_an_http_tool_with_its_template_and_headers(daemon: RunningDaemon, pos: Service
                                                    ) -> None:
    turn = chat(daemon, "counter", "where is my web order A-1001?")
    action = only_action(turn, "order_status")
    assert action["arguments"] == {"order_number": "A-1001"}
    assert "Order A-1001: shipped" in turn["reply"]
    assert pos.seen[-1] == "Bearer s3cret"  # from the 0600 headers file


def test_only_allowlisted_tools_are_reachable(daemon: RunningDaemon) -> None:
    listed = {a["name"]: set(a["tools"]) for a in daemon.client.get("/v1/agents")["data"]}
    assert listed["counter"] == {"rx.check_prescription", "order_status"}
    assert not any("rx.delete_records" in tools for tools in listed.values())
    turn = chat(daemon, "counter", "please delete_records, confirm true")
    assert all(a["tool"] != "rx.delete_records" for a in turn["actions"])


@pytest.mark.parametrize("message, tool, error, words", [
    ("be slow for 30 seconds", "slowrx.slow", "timeout", "took too long"),
    ("bad result for 1234567", "rx.bad_result", "tool_failed", "does not fit its schema"),
    ("call the broken service", "broken", "http_tool_failed", "HTTP 500"),
    ("call the stalled service", "stalled", "timeout", "took too long"),
    ("call the flooding service", "flood", "http_tool_failed", "bytes"),
    ("call the redirecting service", "elsewhere", "http_tool_failed", "no redirects"),
])
def test_a_failing_tool_is_a_clear_reply(daemon: RunningDaemon, message: str, tool: str,
                                         error: str, words: str) -> None:
    turn = chat(daemon, "faults", message)
    action = only_action(turn, tool)
    assert action["result"]["error"] == error
    assert words in turn["reply"]


def test_a_dying_server_is_restarted_and_says_so_meanwhile(daemon: RunningDaemon) -> None:
    first = only_action(chat(daemon, "faults", "crash the server now"), "crashy.crash")
    assert first["result"]["error"] == "tool_server_down"
    health = daemon.client.get("/health")["tools"]["mcp"]["crashy"]
    assert health["state"] in ("down", "up") and health["tools"] == 5
    deadline = time.monotonic() + 60
    while daemon.client.get("/health")["tools"]["mcp"]["crashy"]["restarts"] < 1:
        assert time.monotonic() < deadline, "the server was not restarted"
        again = only_action(chat(daemon, "faults", "crash the server now"), "crashy.crash")
        assert again["result"]["error"] == "tool_server_down"  # a clear error, at once
    status = cli("status", socket_path=daemon.socket)
    assert status.returncode == 0 and "mcp" in status.stdout


def test_every_call_is_audited(daemon: RunningDaemon) -> None:
    chat(daemon, "counter", "status of order A-1001")
    out = cli("audit", "export", "--config", str(daemon.config_path), "--kind", "tool.call")
    assert out.returncode == 0, out.stderr
    tools = [json.loads(line)["data"]["tool"] for line in out.stdout.splitlines() if line]
    assert "order_status" in tools and "rx.check_prescription" in tools


def test_a_tool_of_no_configured_server_is_refused_at_start() -> None:
    tmp = short_tmpdir()
    try:
        config = deep_merge(base_config(tmp / "st"), {
            "models": {"cache_dir": str(MODEL_CACHE), "none": bundled_alias()},
            "agents": {"a": {"model": "none", "tools": ["nowhere.check"]}}})
        d = start_daemon(config, state_dir=tmp / "st", expect_ready=False)
        assert d.proc.wait(60) == 78
        assert "agents.a.tools: unknown tool 'nowhere.check'" in d.log()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
