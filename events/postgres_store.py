"""The PostgreSQL event store (asyncpg): one log shared by several service replicas.

How positions stay safe to tail: every append takes a transaction-level advisory lock before it
reads `max(position)`, and holds it until its commit. Appends from every replica are therefore
serialised: positions are assigned and *committed* in increasing order, without gaps, so a
reader that has seen position n and later reads `position > n` can never skip a row that
commits late (the hazard of sequence-assigned positions, where 11 may commit before 10).

The duplicate and conflict rules are `events.store.plan_append`, run inside the locked
transaction; `UNIQUE(event_id)` and the primary key of `request_slots` back them up in the
database. Each commit sends `NOTIFY` on the log's channel so other replicas wake up at once.

The log lives in one schema: the first entry of the connection's `search_path` (set it with
`?search_path=name` in the URL, or `schema=` in `open`); it is created when missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Callable, Sequence

import asyncpg

import migrations
from events.store import (
    Accepted,
    NewEvent,
    Rejected,
    StoredRow,
    StoreError,
    StoreUnavailable,
    plan_append,
)

# SQLSTATE classes worth retrying: connection exception, insufficient resources, operator
# intervention (shutdown, cancel), transaction rollback (serialisation failure, deadlock).
_RETRYABLE_CLASSES = ("08", "53", "57", "40")
_READ_ONLY = "25006"
_CLOSE_TIMEOUT_S = 5.0

_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


def _translate(exc: BaseException) -> StoreError:
    state = getattr(exc, "sqlstate", None) or ""
    if (not isinstance(exc, asyncpg.PostgresError) or state[:2] in _RETRYABLE_CLASSES
            or state == _READ_ONLY):
        return StoreUnavailable(f"the event log cannot be written: {exc}")
    return StoreError(f"event log error: {exc}")


def _key(schema: str, purpose: str) -> int:
    """A 64-bit advisory lock key for one purpose on one schema's log."""
    digest = hashlib.blake2b(f"llm-metrics:{schema}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class PostgresStore:
    """A log in PostgreSQL. Open with `await PostgresStore.open(dsn)`, then `migrate()`."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, settings: dict[str, str] | None,
                 schema: str):
        self._pool = pool
        self._dsn = dsn
        self._settings = settings
        self.schema = schema
        self._append_key = _key(schema, "append")
        self._migrate_key = _key(schema, "migrate")
        # Unquoted channel names are folded to lower case by LISTEN; keep it lower case.
        self.channel = f"llm_metrics_{self._append_key & 0xFFFF_FFFF_FFFF_FFFF:016x}"
        self._listener: asyncpg.Connection | None = None

    @classmethod
    async def open(cls, dsn: str, *, schema: str | None = None,
                   pool_size: int = 4) -> "PostgresStore":
        """Connect (creating the schema if it is missing) without migrating."""
        settings = {"search_path": schema} if schema else None
        try:
            conn = await asyncpg.connect(dsn, server_settings=settings)
            try:
                schema = await _ensure_schema(conn)
            finally:
                await conn.close()
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size,
                                             server_settings=settings)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc
        return cls(pool, dsn, settings, schema)

    async def migrate(self) -> list[str]:
        """Apply pending migrations, each in its own transaction. Returns the names applied.

        Replicas starting together may all call this: an advisory lock makes one of them apply
        each migration and the others find it recorded.
        """
        applied = []
        try:
            async with self._pool.acquire() as conn:
                for migration in migrations.load("postgres"):
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", self._migrate_key)
                        await conn.execute(
                            "CREATE TABLE IF NOT EXISTS schema_migrations ("
                            " version integer PRIMARY KEY, name text NOT NULL,"
                            " applied_at timestamptz NOT NULL DEFAULT now())"
                        )
                        if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1",
                                               migration.version):
                            continue
                        try:
                            await conn.execute(migration.sql)
                        except asyncpg.PostgresError as exc:
                            raise StoreError(f"migration {migration.version:04d}_"
                                             f"{migration.name} failed: {exc}") from exc
                        await conn.execute("INSERT INTO schema_migrations (version, name) "
                                           "VALUES ($1, $2)", migration.version, migration.name)
                    applied.append(f"{migration.version:04d}_{migration.name}")
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc
        return applied

    async def append(self, batches: Sequence[Sequence[NewEvent]]) -> list[Accepted | Rejected]:
        try:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    return await self.append_in(conn, batches)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc

    async def append_in(self, conn: asyncpg.Connection,
                        batches: Sequence[Sequence[NewEvent]]) -> list[Accepted | Rejected]:
        """The body of `append`, inside a transaction the caller owns and commits.

        `append` is the way to write; this exists so a test can hold an append open and try
        to commit another one before it.
        """
        await conn.execute("SELECT pg_advisory_xact_lock($1)", self._append_key)
        # A new statement, so a new snapshot under READ COMMITTED: it sees every append that
        # committed before this transaction got the lock. One round trip for everything the
        # plan needs, because the lock is held (and other appends wait) until the commit.
        last, ids, payloads, taken = await conn.fetchrow(
            "SELECT (SELECT coalesce(max(position), 0) FROM events), e.ids, e.payloads,"
            "       ARRAY(SELECT slot FROM request_slots WHERE slot = ANY($2::bytea[]))"
            " FROM (SELECT array_agg(event_id) AS ids, array_agg(payload) AS payloads"
            "       FROM events WHERE event_id = ANY($1::bytea[])) AS e",
            list({e.event_id.encode() for batch in batches for e in batch}),
            list({e.slot for batch in batches for e in batch}),
        )
        stored = {event_id.decode(): payload
                  for event_id, payload in zip(ids or (), payloads or ())}
        plan = plan_append(batches, stored, set(taken), last)
        if plan.rows:
            # One round trip while the lock is held: rows, slots and the wake-up together.
            await conn.execute(
                "WITH new_events AS ("
                "  INSERT INTO events (position, event_id, type, payload, recorded_at)"
                "  SELECT p, e, t, b, $5 FROM unnest($1::bigint[], $2::bytea[], $3::smallint[],"
                "                                   $4::bytea[]) AS u(p, e, t, b)"
                "), new_slots AS ("
                "  INSERT INTO request_slots (slot) SELECT unnest($6::bytea[])"
                ") SELECT pg_notify($7, $8)",
                [p for p, _ in plan.rows],
                [e.event_id.encode() for _, e in plan.rows],
                [e.type_code for _, e in plan.rows],
                [e.payload for _, e in plan.rows],
                time.time_ns() // 1000,
                plan.slots,
                self.channel,
                str(plan.rows[-1][0]),
            )
        return plan.results

    async def read(self, after: int, limit: int) -> list[StoredRow]:
        try:
            rows = await self._pool.fetch(
                "SELECT position, event_id, payload, recorded_at FROM events "
                "WHERE position > $1 ORDER BY position LIMIT $2", after, limit)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc
        return [(position, event_id.decode(), payload, recorded_at)
                for position, event_id, payload, recorded_at in rows]

    async def last_position(self) -> int:
        try:
            return await self._pool.fetchval("SELECT coalesce(max(position), 0) FROM events")
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection of `listen` is open."""
        return self._listener is not None and not self._listener.is_closed()

    async def listen(self, on_append: Callable[[], None]) -> None:
        """Call `on_append()` whenever any process commits an append to this log.

        Uses a dedicated connection running `LISTEN`; `on_append` is also called when that
        connection is lost, so the caller can poll and call `listen` again. Raises
        `StoreUnavailable` when the connection cannot be opened.
        """
        if self.listening:
            return
        try:
            conn = await asyncpg.connect(self._dsn, server_settings=self._settings)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc
        try:
            await conn.add_listener(self.channel, lambda *_: on_append())
        except _DRIVER_ERRORS as exc:
            conn.terminate()
            raise _translate(exc) from exc
        conn.add_termination_listener(lambda _conn: on_append())
        self._listener = conn

    async def close(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            listener.terminate()
        try:
            await asyncio.wait_for(self._pool.close(), _CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            self._pool.terminate()


async def _ensure_schema(conn: asyncpg.Connection) -> str:
    """The schema the log lives in: the first of `search_path`, created when missing."""
    schema = await conn.fetchval("SELECT current_schema()")
    if schema is not None:
        return schema
    first = (await conn.fetchval("SHOW search_path")).split(",")[0].strip()
    # An unquoted name in search_path is folded to lower case, like any identifier.
    name = first[1:-1].replace('""', '"') if first.startswith('"') else first.lower()
    if not name or name == "$user":
        raise StoreError(f"no schema to create the event log in (search_path is {first!r}): "
                         "add ?search_path=<schema> to the database URL")
    async with conn.transaction():
        # Replicas starting together would race on CREATE SCHEMA IF NOT EXISTS.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _key(name, "schema"))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(name)}")
    return name
