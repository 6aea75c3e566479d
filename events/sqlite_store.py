"""The SQLite event store (aiosqlite): WAL, `synchronous=FULL`, one writer."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Sequence

import aiosqlite

import migrations
from events.erasure import tombstone, traces
from events.records import erased_id_hash
from events.store import (
    Accepted,
    AppendPlan,
    Erasure,
    NewEvent,
    Rejected,
    StoredRow,
    StoreError,
    StoreUnavailable,
    plan_append,
)

log = logging.getLogger(__name__)

# SQLite's default limit on bound parameters is 32766; stay well below it.
_CHUNK = 5000

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=5000",
)


def _translate(exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    unavailable = ("full", "readonly", "read-only", "locked", "busy", "disk I/O", "unable to open")
    if isinstance(exc, sqlite3.OperationalError) or any(w in text for w in unavailable):
        return StoreUnavailable(f"the event log cannot be written: {text}")
    return StoreError(f"event log error: {text}")


class LogInUse(StoreError):
    """Another process (or store) has the SQLite log open: a second server, or `replay`
    while one serves, would miss each other's events and overwrite each other's snapshot."""


def _take_lock(path: str) -> int:
    """Hold an exclusive `flock` on `<db>.lock` (its file descriptor is returned), with our
    pid and command line written in it; raise `LogInUse` naming the holder.

    The kernel drops the lock when the holder exits, however it dies (`kill -9` included), so
    there is never a stale lock to clean up. `flock` rather than `fcntl` record locks: those
    belong to the process and vanish when any descriptor of the file is closed.
    """
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, _, command = os.pread(fd, 4096, 0).decode(errors="replace").partition("\n")
        os.close(fd)
        holder = f"process {pid} ({command.strip()})" if pid else "another process"
        raise LogInUse(f"the event log {path} is in use by {holder}: one process at a time "
                       "may open a SQLite log; stop it first (several servers need "
                       "PostgreSQL, see Running several replicas)") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{' '.join(sys.argv)}\n".encode(errors="replace"), 0)
    return fd


class SQLiteStore:
    """The default backend: one SQLite file. Open with `await SQLiteStore.open(path)`."""

    # Only this process appends: the writer applies its own rows (no tailer).
    shared = False
    # `limit_size` caps the file (LLM_METRICS_DB_MAX_SIZE).
    limits_size = True

    def __init__(self, conn: aiosqlite.Connection, path: str, lock_fd: int | None = None):
        self._conn = conn
        self.path = path
        self._lock = asyncio.Lock()
        self._lock_fd = lock_fd

    @classmethod
    async def open(cls, path: str | Path) -> "SQLiteStore":
        """Open (creating the folder and file if needed) without migrating.

        Raises `LogInUse` while another store holds the file (see `_take_lock`).
        """
        path = str(path)
        lock_fd = None
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            lock_fd = _take_lock(path)
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
            for pragma in _PRAGMAS:
                await conn.execute(pragma)
        except BaseException as exc:
            if lock_fd is not None:
                os.close(lock_fd)
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc) from exc
            raise
        return cls(conn, path, lock_fd)

    async def migrate(self) -> list[str]:
        """Apply pending migrations, each in its own transaction. Returns the names applied."""
        conn = self._conn
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        async with conn.execute("SELECT version FROM schema_migrations") as cur:
            done = {row[0] for row in await cur.fetchall()}
        applied = []
        for migration in migrations.load("sqlite"):
            if migration.version in done:
                continue
            try:
                await conn.execute("BEGIN IMMEDIATE")
                for statement in _statements(migration.sql):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ'))",
                    (migration.version, migration.name),
                )
                await conn.execute("COMMIT")
            except sqlite3.Error as exc:
                await conn.execute("ROLLBACK")
                raise StoreError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                ) from exc
            applied.append(f"{migration.version:04d}_{migration.name}")
        return applied

    async def append(self, batches: Sequence[Sequence[NewEvent]]) -> list[Accepted | Rejected]:
        async with self._lock:
            return await self._in_thread(_append, batches)

    async def limit_size(self, max_bytes: int) -> int:
        """Cap the file at about `max_bytes` (never below its current size); appends past it
        fail as on a full disk. Returns the cap in bytes. Per connection: call it after `open`."""
        async with self._conn.execute("PRAGMA page_size") as cur:
            page_size = (await cur.fetchone())[0]
        async with self._conn.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page_size)}") as cur:
            pages = (await cur.fetchone())[0]
        return pages * page_size

    async def read(self, after: int, limit: int) -> list[StoredRow]:
        try:
            # One trip to the connection's thread (execute + fetchall + close would be three).
            return await self._conn.execute_fetchall(
                "SELECT position, event_id, payload, recorded_at FROM events "
                "WHERE position > ? ORDER BY position LIMIT ?",
                (after, limit),
            )
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def last_position(self) -> int:
        try:
            return await self._last_position()
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def erase(self, positions: Sequence[int], scope: str, key_hash: str) -> Erasure:
        """See `EventStore.erase`. The rows' bytes are zeroed (`secure_delete`) and the WAL,
        which still holds them from their append, is checkpointed into the file and truncated
        before this returns."""
        async with self._lock:
            return await self._in_thread(_erase, positions, scope, key_hash)

    async def close(self) -> None:
        try:
            await self._conn.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    async def _last_position(self) -> int:
        async with self._conn.execute("SELECT max(position) FROM events") as cur:
            row = await cur.fetchone()
        return row[0] or 0

    async def _in_thread(self, fn, *args):
        """`fn(sqlite3_connection, *args)` in the connection's thread, in one hop.

        Every aiosqlite call is a round trip to its thread and back to the event loop; a
        transaction of six statements made that trip six times per group commit. aiosqlite
        runs a plain function in its thread with `_execute` (private, but unchanged since
        0.17; `setup.cfg` pins <1): the whole transaction then costs one trip.
        """
        conn = self._conn
        return await conn._execute(lambda: fn(conn._conn, *args))


def _append(conn: sqlite3.Connection, batches: Sequence[Sequence[NewEvent]]
            ) -> list[Accepted | Rejected]:
    """The append transaction, run in the connection's thread (see `SQLiteStore._in_thread`).

    First as if every event were new (the usual case), relying on the unique indexes on event
    ids and request slots: a group that meets one is planned again, knowing what the log holds.
    Probing the indexes for every event first cost a fifth of this thread's time in batch
    ingest (docs/ingest-performance.md)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise _translate(exc) from exc
    try:
        plan = _plan_as_new(conn, batches)
        if plan is not None:
            try:
                _write(conn, plan)
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                plan = None
        if plan is None:
            plan = _plan_knowing_the_log(conn, batches)
            _write(conn, plan)
        conn.execute("COMMIT")
    except BaseException as exc:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the transaction may already be gone (e.g. SQLite rolled back on a full disk)
        if isinstance(exc, sqlite3.Error):
            raise _translate(exc) from exc
        raise
    return plan.results


def _plan_as_new(conn: sqlite3.Connection, batches: Sequence[Sequence[NewEvent]]
                 ) -> AppendPlan | None:
    """The plan if no event is in the log yet: None when that plan would not append every
    event (a duplicate or conflict within the group: the full plan says which), or when the
    log was ever erased (an erased id is a duplicate, and only a lookup finds it)."""
    last, ever_erased = conn.execute(
        "SELECT (SELECT max(position) FROM events), "
        "EXISTS (SELECT 1 FROM erased_events)").fetchone()
    if ever_erased:
        return None
    plan = plan_append(batches, {}, set(), last or 0)
    if all(type(r) is Accepted and not r.duplicates for r in plan.results):
        return plan
    return None


def _plan_knowing_the_log(conn: sqlite3.Connection, batches: Sequence[Sequence[NewEvent]]
                          ) -> AppendPlan:
    last = conn.execute("SELECT max(position) FROM events").fetchone()[0] or 0
    ids = list({e.event_id for batch in batches for e in batch})
    stored = dict(_select_in(conn, "SELECT event_id, payload FROM events WHERE event_id IN ",
                             ids))
    slots = list({e.slot for batch in batches for e in batch})
    taken = {row[0] for row in _select_in(
        conn, "SELECT slot FROM request_slots WHERE slot IN ", slots)}
    return plan_append(batches, stored, taken, last, _erased_ids(conn, ids, stored))


def _write(conn: sqlite3.Connection, plan: AppendPlan) -> None:
    if plan.rows:
        now = time.time_ns() // 1000
        _insert(conn, "INSERT INTO events (position, event_id, type, payload, recorded_at)",
                [(p, e.event_id, e.type_code, e.payload, now) for p, e in plan.rows])
        _insert(conn, "INSERT INTO request_slots (slot)", [(s,) for s in plan.slots])


def _erased_ids(conn: sqlite3.Connection, ids: list[str], stored: dict) -> set[str]:
    """Those of `ids` that are not in the log because they were erased."""
    if conn.execute("SELECT 1 FROM erased_events LIMIT 1").fetchone() is None:
        return set()  # a log never erased (the usual case) pays nothing for the check
    by_hash = {erased_id_hash(i): i for i in ids if i not in stored}
    found = _select_in(conn, "SELECT id_hash FROM erased_events WHERE id_hash IN ",
                       list(by_hash))
    return {by_hash[h] for (h,) in found}


def _erase(conn: sqlite3.Connection, positions: Sequence[int], scope: str,
           key_hash: str) -> Erasure:
    """The erase transaction, then the scrub, in the connection's thread."""
    try:
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise _translate(exc) from exc
    try:
        rows = _select_in(conn, "SELECT position, event_id, payload FROM events "
                                "WHERE type != 4 AND position IN ", list(positions))
        if not rows:
            conn.execute("ROLLBACK")
            return Erasure(0, 0, [])
        found = traces((event_id, payload) for _, event_id, payload in rows)
        tomb = tombstone([p for p, _, _ in rows], scope, key_hash)
        _delete_in(conn, "DELETE FROM events WHERE position IN ", [p for p, _, _ in rows])
        _delete_in(conn, "DELETE FROM request_slots WHERE slot IN ", found.slots)
        _insert(conn, "INSERT OR IGNORE INTO erased_events (id_hash)",
                [(h,) for h in found.id_hashes])
        position = conn.execute("SELECT max(position) FROM events").fetchone()[0] or 0
        position = max(position, max(p for p, _, _ in rows)) + 1
        conn.execute("INSERT INTO events (position, event_id, type, payload, recorded_at) "
                     "VALUES (?, ?, ?, ?, ?)", (position, tomb.event_id, tomb.type_code,
                                                tomb.payload, time.time_ns() // 1000))
        conn.execute("COMMIT")
    except BaseException as exc:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        if isinstance(exc, sqlite3.Error):
            raise _translate(exc) from exc
        raise
    # Committed: from here on a failure must not hide the tombstone from the read models.
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.Error as exc:
        busy = str(exc)
    if busy:
        log.warning("erasure at position %d: the WAL, which still holds the erased bytes, "
                    "could not be truncated (%s); the next erasure or checkpoint retries",
                    position, "a reader holds it" if busy == 1 else busy)
    return Erasure(len(rows), position, [(position, tomb)])


def _delete_in(conn: sqlite3.Connection, sql: str, values: list) -> None:
    for start in range(0, len(values), _CHUNK):
        chunk = values[start:start + _CHUNK]
        conn.execute(f"{sql}({','.join('?' * len(chunk))})", chunk)


def _insert(conn: sqlite3.Connection, sql: str, rows: list[tuple]) -> None:
    """`sql VALUES (...), (...), ...`: one statement for many rows.

    `executemany` steps SQLite once per row, and the sqlite3 module lets go of the GIL around
    each step; this thread must then wait for the busy event loop to hand the GIL back before
    the next row. One statement per chunk waits once.
    """
    width = len(rows[0])
    per_statement = _CHUNK // width
    marks = "(" + ",".join("?" * width) + ")"
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        conn.execute(f"{sql} VALUES {','.join([marks] * len(chunk))}",
                     [value for row in chunk for value in row])


def _select_in(conn: sqlite3.Connection, sql: str, values: list) -> list[tuple]:
    found: list[tuple] = []
    for start in range(0, len(values), _CHUNK):
        chunk = values[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        found.extend(conn.execute(f"{sql}({marks})", chunk).fetchall())
    return found


def _statements(sql: str) -> list[str]:
    """Split a migration into statements (sqlite3 runs one at a time inside a transaction)."""
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip() and not current.strip().startswith("--"):
        statements.append(current.strip())
    return statements
