"""A corrupt database is moved aside, never deleted; readable rows come back; the daemon
says so on /health."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from edged.salvage import check, corrupt_copies
from edged.store import Schema, Store
from tests.edgedtest import RunningDaemon

NOTES = Schema("notes", ("CREATE TABLE note (id INTEGER PRIMARY KEY, text TEXT NOT NULL)",))
PAGE = 4096


def make_db(path: Path, rows: int) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA page_size = 4096")
    con.execute("CREATE TABLE note (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    con.executemany("INSERT INTO note (id, text) VALUES (?, ?)",
                    [(i, f"note {i} " + "x" * 200) for i in range(1, rows + 1)])
    con.commit()
    con.close()


def damage_page(path: Path, page: int) -> None:
    """Overwrite one page of the table's b-tree with garbage."""
    with path.open("r+b") as f:
        f.seek(page * PAGE)
        f.write(b"\xa5" * PAGE)


async def test_a_damaged_page_costs_only_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "edged.db"
    make_db(db, 2000)
    damage_page(db, 40)
    async with Store(db, [NOTES]) as store:
        assert store.salvage is not None
        copy = store.salvage.corrupt_copy
        assert copy.exists() and copy.name.startswith("edged.db.corrupt-")
        rows = await store.fetchall("SELECT id FROM note")
        assert 1500 < len(rows) < 2000  # most rows came back, the damaged page's did not
        assert store.salvage.copied["note"] == len(rows)
        assert "note" in store.salvage.lost
        health = store.health()
        assert health["degraded"] and str(copy) in health["corrupt_copies"]
    # The next open finds a sound database, but stays degraded while the copy is there.
    async with Store(db, [NOTES]) as store:
        assert store.salvage is None and store.health()["degraded"]
    copy.rename(tmp_path / "inspected.db")
    async with Store(db, [NOTES]) as store:
        assert store.health() == {"degraded": False}


async def test_a_file_that_is_not_a_database_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "edged.db"
    db.write_bytes(b"this is not sqlite" * 500)
    async with Store(db, [NOTES]) as store:
        assert store.salvage is not None and "not a database" in store.salvage.problem
        assert store.salvage.corrupt_copy.read_bytes() == b"this is not sqlite" * 500
        assert await store.fetchall("SELECT * FROM note") == []


async def test_a_sound_database_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "edged.db"
    async with Store(db, [NOTES]) as store, store.transaction() as con:
        await con.executemany("INSERT INTO note (text) VALUES (?)", [("n",)] * 50)
    async with Store(db, [NOTES]) as store:
        assert store.salvage is None
        assert len(await store.fetchall("SELECT id FROM note")) == 50
    assert corrupt_copies(db) == []


def test_daemon_reports_a_corrupt_database(edged: Callable[..., RunningDaemon],
                                           state_dir: Path) -> None:
    d = edged()
    assert d.client.get("/health")["store"] == {"degraded": False}
    assert d.stop() == 0
    damage_page(state_dir / "edged.db", 1)
    d = edged()
    health = d.client.get("/health")
    assert health["status"] == "degraded"
    assert health["store"]["degraded"] and health["store"]["corrupt_copies"]
    assert "corrupt" in d.log()


async def test_a_locked_database_is_not_mistaken_for_a_corrupt_one(tmp_path: Path) -> None:
    db = tmp_path / "edged.db"
    make_db(db, 10)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            check(db)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert corrupt_copies(db) == []
