"""The agents' tables in the one SQLite database."""

from __future__ import annotations

from edged.store import Schema

SCHEMA = Schema("agents", (
    """
    CREATE TABLE agent_sessions (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        uid INTEGER NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        encrypted INTEGER NOT NULL,
        state BLOB NOT NULL
    );
    CREATE INDEX agent_sessions_expires ON agent_sessions (expires);
    CREATE TABLE catalog_products (
        sku TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        brand TEXT NOT NULL,
        model TEXT NOT NULL,
        category TEXT NOT NULL,
        attributes TEXT NOT NULL,
        price REAL NOT NULL
    );
    CREATE TABLE catalog_stock (
        sku TEXT NOT NULL REFERENCES catalog_products (sku) ON DELETE CASCADE,
        store TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        PRIMARY KEY (sku, store)
    );
    CREATE TABLE catalog_stores (id TEXT PRIMARY KEY, name TEXT NOT NULL);
    CREATE TABLE seed_versions (name TEXT PRIMARY KEY, sha256 TEXT NOT NULL);
    CREATE TABLE price_quotes (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        created REAL NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE agent_tickets (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        created REAL NOT NULL,
        topic TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE clinic_providers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        specialty TEXT NOT NULL,
        schedule TEXT NOT NULL
    );
    CREATE TABLE clinic_bookings (
        id TEXT PRIMARY KEY,
        provider_id TEXT NOT NULL REFERENCES clinic_providers (id),
        start TEXT NOT NULL,
        created REAL NOT NULL,
        patient BLOB NOT NULL,
        UNIQUE (provider_id, start)
    )
    """,
    """
    CREATE TABLE agent_approvals (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        tool TEXT NOT NULL,
        session TEXT NOT NULL,
        uid INTEGER NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        state TEXT NOT NULL,
        decided_by INTEGER,
        decided REAL,
        encrypted INTEGER NOT NULL,
        arguments BLOB NOT NULL
    );
    CREATE INDEX agent_approvals_state ON agent_approvals (state)
    """,
))
