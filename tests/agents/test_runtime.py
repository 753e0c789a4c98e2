"""The runtime in-process, on a real store and outbox: what no message can reach over the
API (a tool name from elsewhere, a slow tool, another uid's session)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edged.agents import tables
from edged.agents.assemble import build_runtime
from edged.agents.runtime import AgentRuntime
from edged.agents.sessions import Sealer, SessionStore
from edged.agents.tools import ToolContext
from edged.audit.log import DisabledAudit
from edged.config import parse_config
from edged.errors import NotFound
from edged.roles import Peer, Role
from edged.store import Store
from edged.sync import outbox as sync_outbox
from tests.agents.conftest import agents_config


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "edged.db", [sync_outbox.SCHEMA, tables.SCHEMA]) as s:
        yield s


async def runtime_on(store: Store, tmp_path: Path) -> AgentRuntime:
    cfg = parse_config(agents_config(tmp_path, model=False))
    registry = CollectorRegistry()
    outbox = sync_outbox.Outbox(store, 1 << 20, registry)
    return await build_runtime(cfg.agents, keys_dir=tmp_path / "keys", store=store,
                               models=None, audit=DisabledAudit(), outbox=outbox,
                               registry=registry)


async def test_tool_outside_allowlist_never_runs(store: Store, tmp_path: Path) -> None:
    rt = await runtime_on(store, tmp_path)
    kiosk = rt.agents["kiosk"]
    ctx = ToolContext("kiosk", 1000, "s1")
    result = await rt.run_tool(kiosk, ctx, "book_appointment", {
        "provider": "Dr. Patel", "date": "2030-01-07", "time": "09:00", "patient_name": "A B"})
    assert result["error"] == "forbidden"
    assert await store.fetchall("SELECT * FROM clinic_bookings") == []


async def test_arguments_are_validated(store: Store, tmp_path: Path) -> None:
    rt = await runtime_on(store, tmp_path)
    result = await rt.run_tool(rt.agents["kiosk"], ToolContext("kiosk", 1000, "s1"),
                               "create_price_quote", {"items": [{"product": "x",
                                                                 "quantity": "lots"}]})
    assert result["error"] == "bad_request" and "quantity" in result["summary"]


async def test_slow_tool_times_out(store: Store, tmp_path: Path) -> None:
    rt = await runtime_on(store, tmp_path)
    kiosk = rt.agents["kiosk"]
    kiosk.spec = dataclasses.replace(kiosk.spec, tool_timeout=0.0)
    result = await rt.run_tool(kiosk, ToolContext("kiosk", 1000, "s1"), "check_inventory",
                               {"product": "Pixel 9"})
    assert result["error"] == "timeout"


async def test_session_belongs_to_its_uid_and_expires(store: Store) -> None:
    sessions = SessionStore(store, Sealer(b"k" * 32), ttl=3600)
    s = sessions.create("clinic", uid=1000)
    s.state["said"] = "private"
    await sessions.save(s, encrypt=True)
    assert (await sessions.load(s.id, "clinic", 1000)).state["said"] == "private"
    with pytest.raises(NotFound):
        await sessions.load(s.id, "clinic", 1001)
    expired = SessionStore(store, Sealer(b"k" * 32), ttl=0)
    await expired.save(s, encrypt=True)
    with pytest.raises(NotFound):
        await sessions.load(s.id, "clinic", 1000)
    assert await sessions.purge() == 1


async def test_groups_limit_who_may_use_an_agent(store: Store, tmp_path: Path) -> None:
    rt = await runtime_on(store, tmp_path)
    clinic = rt.agents["clinic"]
    clinic.spec = dataclasses.replace(clinic.spec, allowed_groups=("nurses",))
    def peer(groups: set[str], role: Role) -> Peer:
        return Peer(pid=1, uid=1000, gid=1000, groups=frozenset(groups), role=role)
    assert [a.spec.name for a in rt.visible(peer({"edged"}, Role.CLIENT))] == ["kiosk"]
    assert len(rt.visible(peer({"edged", "nurses"}, Role.CLIENT))) == 2
    assert len(rt.visible(peer(set(), Role.ADMIN))) == 2


async def test_malformed_date_is_a_clear_error(store: Store, tmp_path: Path) -> None:
    rt = await runtime_on(store, tmp_path)
    result = await rt.run_tool(rt.agents["clinic"], ToolContext("clinic", 1000, "s1"),
                               "book_appointment", {"provider": "Dr. Patel", "date": "31/12",
                                                    "time": "09:00", "patient_name": "A B"})
    assert result["error"] == "bad_request" and "arguments.date" in result["summary"]
