"""What the store does with a corrupt database: never delete it, keep what it can read.

At open, ``PRAGMA quick_check`` runs on the database. If it fails (or the file is not a
database at all), the file and its WAL/SHM are renamed to ``edged.db.corrupt-<UTC time>``
(kept for the operator, never deleted by edged), a fresh database is made, and every row
that can still be read from the corrupt copy is copied into it, table by table; where a
whole-table copy hits a bad page, rows are read one rowid at a time so only the damaged
ones are lost. The daemon then reports it: an error in the log and ``/health`` degraded,
for as long as a ``.corrupt-*`` copy sits next to the database.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHUNK = 500
CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
SIDECARS = ("-wal", "-shm")


@dataclass
class Salvage:
    """One recovery: where the corrupt file went, why, and what came back."""

    corrupt_copy: Path
    problem: str
    copied: dict[str, int] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)  # table -> why it could not be read


def check(path: Path) -> str | None:
    """None when the database is sound (or absent); otherwise what is wrong with it."""
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(path)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        # Only damage counts: a locked, unreadable or missing-permission file is not corrupt,
        # and moving it aside would hide the real problem.
        if getattr(e, "sqlite_errorcode", 0) & 0xFF not in CORRUPT_CODES:
            raise
        return str(e)
    problems = [str(r[0]) for r in rows if r[0] != "ok"]
    return "; ".join(problems[:5]) or None


def move_aside(path: Path, problem: str) -> Salvage:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    path.rename(aside)
    for suffix in SIDECARS:
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            # The WAL moves with its database: it may hold the newest committed rows.
            sidecar.rename(aside.with_name(aside.name + suffix))
    log.error("the database %s is corrupt (%s): moved aside to %s; a new one is made and "
              "every readable row is copied into it", path, problem, aside)
    return Salvage(aside, problem)


def copy_readable(salvage: Salvage, path: Path) -> None:
    """Copy what can be read from the corrupt copy into the fresh, migrated database."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("ATTACH DATABASE ? AS old", (str(salvage.corrupt_copy),))
        for table in _tables(con, "main"):
            _copy_table(con, table, salvage)
    except sqlite3.DatabaseError as e:
        salvage.lost["*"] = str(e)
    finally:
        con.close()
    log.error("salvaged from %s: %s%s", salvage.corrupt_copy,
              ", ".join(f"{t} {n} rows" for t, n in salvage.copied.items()) or "nothing",
              "".join(f"; {t} unreadable ({why})" for t, why in salvage.lost.items()))


def _tables(con: sqlite3.Connection, schema: str) -> list[str]:
    rows = con.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table' "
                       "AND name NOT LIKE 'sqlite_%' AND name != 'schema_version'").fetchall()
    return [r[0] for r in rows]


def _columns(con: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [r[1] for r in con.execute(f'PRAGMA {schema}.table_info("{table}")').fetchall()]


def _copy_table(con: sqlite3.Connection, table: str, salvage: Salvage) -> None:
    try:
        old_cols = set(_columns(con, "old", table))
    except sqlite3.DatabaseError as e:
        salvage.lost[table] = str(e)
        return
    cols = [c for c in _columns(con, "main", table) if c in old_cols]
    if not cols:
        return
    names = ", ".join(f'"{c}"' for c in cols)
    insert = f'INSERT OR IGNORE INTO main."{table}" ({names}) '
    try:
        con.execute("BEGIN")
        cur = con.execute(insert + f'SELECT {names} FROM old."{table}"')
        con.execute("COMMIT")
        salvage.copied[table] = cur.rowcount
    except sqlite3.DatabaseError:
        con.execute("ROLLBACK")
        salvage.copied[table] = _copy_by_rowid(con, table, insert, names, salvage)


def _copy_by_rowid(con: sqlite3.Connection, table: str, insert: str, names: str,
                   salvage: Salvage) -> int:
    """Chunk by chunk of rowids, and row by row inside a chunk that fails to read, so a bad
    page costs only the rows on it. Reads happen outside any write transaction: SQLite
    cannot commit a transaction in which it met a corrupt page."""
    copied = 0
    select = f'SELECT {names} FROM old."{table}" WHERE rowid '
    values = insert + f"VALUES ({', '.join('?' * len(names.split(', ')))})"
    for start in range(1, _max_rowid(con, table) + 1, CHUNK):
        try:
            rows = con.execute(select + "BETWEEN ? AND ?", (start, start + CHUNK - 1)).fetchall()
        except sqlite3.DatabaseError:
            rows = _rows_one_by_one(con, select + "= ?", range(start, start + CHUNK))
            salvage.lost.setdefault(table, "some rows are on damaged pages")
        con.execute("BEGIN")
        con.executemany(values, rows)
        con.execute("COMMIT")
        copied += len(rows)
    return copied


def _rows_one_by_one(con: sqlite3.Connection, sql: str, rowids: range) -> list[Any]:
    rows = []
    for rowid in rowids:
        try:
            rows.extend(con.execute(sql, (rowid,)).fetchall())
        except sqlite3.DatabaseError:
            continue
    return rows


def _max_rowid(con: sqlite3.Connection, table: str) -> int:
    for sql in (f'SELECT max(rowid) FROM old."{table}"',
                "SELECT seq FROM old.sqlite_sequence WHERE name = ?"):
        try:
            row = con.execute(sql, (table,) if "?" in sql else ()).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row and row[0]:
            return int(row[0])
    return 0


def corrupt_copies(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.glob(f"{path.name}.corrupt-*")
                  if not p.name.endswith(SIDECARS))
