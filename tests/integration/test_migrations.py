"""Migrations: applied in order to an empty database, recorded, and a no-op on a current one."""

import sqlite3

import migrations
from events.sqlite_store import SQLiteStore


async def test_an_empty_database_gets_every_migration(tmp_path):
    store = await SQLiteStore.open(tmp_path / "new" / "events.db")  # folder created
    applied = await store.migrate()
    await store.close()
    expected = [f"{m.version:04d}_{m.name}" for m in migrations.load("sqlite")]
    assert applied == expected
    with sqlite3.connect(tmp_path / "new" / "events.db") as db:
        recorded = [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert recorded == [m.version for m in migrations.load("sqlite")]
    assert {"events", "request_slots", "event_log"} <= tables


async def test_a_current_database_is_left_alone(tmp_path):
    path = tmp_path / "events.db"
    store = await SQLiteStore.open(path)
    await store.migrate()
    await store.close()
    store = await SQLiteStore.open(path)
    assert await store.migrate() == []
    await store.close()


async def test_the_wal_and_full_sync_are_on(tmp_path):
    store = await SQLiteStore.open(tmp_path / "events.db")
    await store.migrate()
    await store.close()
    with sqlite3.connect(tmp_path / "events.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
