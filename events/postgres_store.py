"""The PostgreSQL event store (asyncpg): one log shared by several service replicas.

Appends from every replica run concurrently: no lock is taken. What keeps the log safe to tail
is a commit-order horizon (see docs/scaling.md):

- a row's position is `(xid << 20) + n`: the 64-bit id of the transaction that appended it
  (`pg_current_xact_id()`, taken by the append's insert statement) and its ordinal in that
  transaction. Positions therefore increase with transaction id and have holes between
  transactions;
- readers only see rows below `pg_snapshot_xmin(pg_current_snapshot()) << 20`: every
  transaction with a smaller id has ended, and a transaction that starts later gets a larger
  id, so the rows below the horizon are final and no row can ever appear below a position a
  reader has passed. A transaction that commits after a later one is read after it commits,
  at its own (smaller) position, before the later one.

The duplicate and conflict rules are `events.store.plan_append`, run on what the append's
snapshot sees; `UNIQUE(event_id)` and the primary key of `request_slots` enforce them against
concurrent appends: the second of two racing appends waits for the first, fails on the index,
and is retried (its new plan then sees the first's rows as duplicates or conflicts). After each
commit, a `NOTIFY` on the log's channel wakes the other replicas (sent after the commit, not in
the append: PostgreSQL serialises the commits of transactions that queued a notification).

The log lives in one schema: the first entry of the connection's `search_path` (set it with
`?search_path=name` in the URL, or `schema=` in `open`); it is created when missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from typing import Callable, Sequence

import asyncpg

import migrations
from events.erasure import tombstone, traces
from events.records import erased_id_hash
from events.store import (
    Accepted,
    Erasure,
    NewEvent,
    Rejected,
    StoredRow,
    StoreError,
    StoreUnavailable,
    plan_append,
)

log = logging.getLogger(__name__)

# A transaction's rows take positions (xid << POSITION_BITS) + 1, + 2, ...
POSITION_BITS = 20
MAX_TRANSACTION_EVENTS = (1 << POSITION_BITS) - 1
# The first position no running or future transaction can still write below.
HORIZON_SQL = f"(pg_snapshot_xmin(pg_current_snapshot())::text::bigint << {POSITION_BITS})"

# SQLSTATE classes worth retrying: connection exception, insufficient resources, operator
# intervention (shutdown, cancel), transaction rollback (serialisation failure, deadlock).
_RETRYABLE_CLASSES = ("08", "53", "57", "40")
_READ_ONLY = "25006"
# Lost races with a concurrent append: run the append again, it will see the winner's rows.
_RACES = (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError,
          asyncpg.SerializationError)
_ATTEMPTS = 8
_CLOSE_TIMEOUT_S = 5.0

# Everything asyncpg (or the socket under it) raises: server errors, a closed or broken
# connection (InterfaceError, InternalClientError), the network, timeouts.
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                  OSError, asyncio.TimeoutError)


def _translate(exc: BaseException) -> StoreError:
    state = getattr(exc, "sqlstate", None) or ""
    if (not isinstance(exc, asyncpg.PostgresError) or state[:2] in _RETRYABLE_CLASSES
            or state == _READ_ONLY):
        return StoreUnavailable(f"the event log is unavailable: {type(exc).__name__}: {exc}")
    return StoreError(f"event log error: {type(exc).__name__}: {exc}")


def _key(schema: str, purpose: str) -> int:
    """A 64-bit advisory lock key for one purpose on one schema's log."""
    digest = hashlib.blake2b(f"llm-metrics:{schema}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _groups(batches: Sequence[Sequence[NewEvent]]) -> list[Sequence[Sequence[NewEvent]]]:
    """Split batches into transactions of at most MAX_TRANSACTION_EVENTS events."""
    groups: list[list[Sequence[NewEvent]]] = [[]]
    size = 0
    for batch in batches:
        if len(batch) > MAX_TRANSACTION_EVENTS:
            raise StoreError(f"a batch of {len(batch)} events is more than one PostgreSQL "
                             f"append can hold ({MAX_TRANSACTION_EVENTS})")
        if size + len(batch) > MAX_TRANSACTION_EVENTS:
            groups.append([])
            size = 0
        groups[-1].append(batch)
        size += len(batch)
    return groups


class PostgresStore:
    """A log in PostgreSQL. Open with `await PostgresStore.open(dsn)`, then `migrate()`."""

    # Other processes append to this log: the service follows it (service/tailer.py).
    shared = True
    # No cap on the log's size (LLM_METRICS_DB_MAX_SIZE is SQLite's).
    limits_size = False

    def __init__(self, pool: asyncpg.Pool, dsn: str, settings: dict[str, str] | None,
                 schema: str):
        self._pool = pool
        self._dsn = dsn
        self._settings = settings
        self.schema = schema
        self._migrate_key = _key(schema, "migrate")
        # Unquoted channel names are folded to lower case by LISTEN; keep it lower case.
        channel_key = _key(schema, "append") & 0xFFFF_FFFF_FFFF_FFFF
        self.channel = f"llm_metrics_{channel_key:016x}"
        self._listener: asyncpg.Connection | None = None
        self._notify_wanted = asyncio.Event()
        self._notifier: asyncio.Task | None = None

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
        results: list[Accepted | Rejected] = []
        for group in _groups(batches):
            results.extend(await self._append_group(group))
        return results

    async def _append_group(self, batches: Sequence[Sequence[NewEvent]]
                            ) -> list[Accepted | Rejected]:
        for attempt in range(_ATTEMPTS):
            try:
                async with self._pool.acquire() as conn:
                    # No explicit transaction: the insert is one statement, so it is atomic
                    # and commits on its own, which saves the BEGIN and COMMIT round trips.
                    results = await self.append_in(conn, batches)
                if any(isinstance(r, Accepted) and r.appended for r in results):
                    self._wake_others()
                return results
            except _RACES:
                # Another replica appended the same event id or filled the same slot first.
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            except _DRIVER_ERRORS as exc:
                raise _translate(exc) from exc
        raise StoreUnavailable(f"the append lost {_ATTEMPTS} races with concurrent appends "
                               "of the same events; retry")

    def _wake_others(self) -> None:
        """NOTIFY soon, off the append's path; commits in the meantime share one NOTIFY."""
        self._notify_wanted.set()
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.create_task(self._notify_loop(), name="log-notify")

    async def _notify_loop(self) -> None:
        while True:
            await self._notify_wanted.wait()
            self._notify_wanted.clear()
            try:
                await self._pool.execute("SELECT pg_notify($1, '')", self.channel)
            except _DRIVER_ERRORS as exc:
                log.debug("NOTIFY after an append failed: %s", exc)

    async def _notify(self, conn: asyncpg.Connection) -> None:
        """Wake the tailers; the commit is done, so a failure here only delays them (poll)."""
        try:
            await conn.execute("SELECT pg_notify($1, '')", self.channel)
        except _DRIVER_ERRORS as exc:
            log.debug("NOTIFY after an append failed: %s", exc)

    async def append_in(self, conn: asyncpg.Connection,
                        batches: Sequence[Sequence[NewEvent]]) -> list[Accepted | Rejected]:
        """The body of `append`: a read for the plan, then one statement that takes the
        transaction id (which fixes the positions) and inserts the rows and slots.

        Outside a transaction the insert commits by itself (what `append` does); inside one,
        the caller commits: a test holds an append open that way. It sends no NOTIFY. The plan
        sees every append committed before it; one committed between the plan and the insert
        makes the insert fail on a unique index, and `append` plans again.
        """
        by_hash = {erased_id_hash(e.event_id): e.event_id for batch in batches for e in batch}
        ids, payloads, positions, taken, erased = await conn.fetchrow(
            "SELECT e.ids, e.payloads, e.positions,"
            "       ARRAY(SELECT slot FROM request_slots WHERE slot = ANY($2::bytea[])),"
            "       ARRAY(SELECT id_hash FROM erased_events WHERE id_hash = ANY($3::bytea[]))"
            " FROM (SELECT array_agg(event_id) AS ids, array_agg(payload) AS payloads,"
            "              array_agg(position) AS positions"
            "       FROM events WHERE event_id = ANY($1::bytea[])) AS e",
            list({e.event_id.encode() for batch in batches for e in batch}),
            list({e.slot for batch in batches for e in batch}),
            list(by_hash),
        )
        stored = {event_id.decode(): payload
                  for event_id, payload in zip(ids or (), payloads or ())}
        where = {event_id.decode(): p for event_id, p in zip(ids or (), positions or ())}
        plan = plan_append(batches, stored, set(taken), 0,
                           {by_hash[h] for h in erased})
        base = 0
        if plan.rows:
            # The plan numbered the new rows 1, 2, ...: their positions are base + n. Rows and
            # slots go in index order, so two appends racing on the same keys wait for each
            # other instead of deadlocking.
            base = await conn.fetchval(
                "WITH x AS MATERIALIZED ("
                f"  SELECT pg_current_xact_id()::text::bigint << {POSITION_BITS} AS base"
                "), new_events AS ("
                "  INSERT INTO events (position, event_id, type, payload, recorded_at)"
                "  SELECT x.base + n, e, t, b, $5 FROM x, unnest($1::bigint[], $2::bytea[],"
                "         $3::smallint[], $4::bytea[]) AS u(n, e, t, b) ORDER BY e"
                "), new_slots AS ("
                "  INSERT INTO request_slots (slot) SELECT s FROM unnest($6::bytea[]) AS s"
                "  ORDER BY s"
                ") SELECT base FROM x",
                [n for n, _ in plan.rows],
                [e.event_id.encode() for _, e in plan.rows],
                [e.type_code for _, e in plan.rows],
                [e.payload for _, e in plan.rows],
                time.time_ns() // 1000,
                plan.slots,
            )
        where.update((e.event_id, base + n) for n, e in plan.rows)
        return [_placed(result, batch, base, where)
                for result, batch in zip(plan.results, batches)]

    async def read(self, after: int, limit: int) -> list[StoredRow]:
        """Rows after `after` below the horizon: final, they can be read in one pass."""
        try:
            rows = await self._pool.fetch(
                "SELECT position, event_id, payload, recorded_at FROM events "
                f"WHERE position > $1 AND position < {HORIZON_SQL} ORDER BY position LIMIT $2",
                after, limit)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc
        return [(position, event_id.decode(), payload, recorded_at)
                for position, event_id, payload, recorded_at in rows]

    async def last_position(self) -> int:
        try:
            return await self._pool.fetchval(
                f"SELECT coalesce(max(position), 0) FROM events WHERE position < {HORIZON_SQL}")
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc

    async def horizon(self) -> tuple[int, int]:
        """(the first position that is not final yet, how many committed rows wait at or
        above it, counted up to 10,000): rows that wait long mean a transaction open somewhere
        on the server holds the horizon back."""
        try:
            return tuple(await self._pool.fetchrow(
                "SELECT h, (SELECT count(*) FROM (SELECT 1 FROM events WHERE position >= h"
                "                            LIMIT 10000) AS w)"
                f" FROM (SELECT {HORIZON_SQL} AS h) AS x"))
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
        if self._listener is not None:
            self._listener.terminate()
            self._listener = None
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

    async def erase(self, positions: Sequence[int], scope: str, key_hash: str) -> Erasure:
        """See `EventStore.erase`. The tombstone takes this transaction's position like any
        append; then `VACUUM` prunes the dead rows, which is all PostgreSQL offers short of
        rewriting the table (docs/event-log.md, "Erasure")."""
        try:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    xid = await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")
                    rows = await conn.fetch(
                        "DELETE FROM events WHERE type != 4 AND position = ANY($1::bigint[])"
                        " RETURNING position, event_id, payload", list(positions))
                    if not rows:
                        return Erasure(0, 0, [])
                    found = traces((r["event_id"].decode(), r["payload"]) for r in rows)
                    tomb = tombstone([r["position"] for r in rows], scope, key_hash)
                    position = (xid << POSITION_BITS) + 1
                    await conn.execute(
                        "WITH gone AS (DELETE FROM request_slots WHERE slot = ANY($1::bytea[]))"
                        " INSERT INTO erased_events (id_hash) SELECT unnest($2::bytea[])"
                        " ON CONFLICT DO NOTHING", found.slots, found.id_hashes)
                    await conn.execute(
                        "INSERT INTO events (position, event_id, type, payload, recorded_at)"
                        " VALUES ($1, $2, $3, $4, $5)", position, tomb.event_id.encode(),
                        tomb.type_code, tomb.payload, time.time_ns() // 1000)
                await self._notify(conn)
                try:
                    await conn.execute("VACUUM events, request_slots")
                except _DRIVER_ERRORS as exc:  # committed: the tombstone must still be applied
                    log.warning("erasure at position %d: VACUUM failed (%s); autovacuum will "
                                "prune the rows", position, exc)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc
        return Erasure(len(rows), position, [(position, tomb)])

    async def close(self) -> None:
        if self._notifier is not None:
            self._notifier.cancel()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            listener.terminate()
        try:
            await asyncio.wait_for(self._pool.close(), _CLOSE_TIMEOUT_S)
        except (asyncio.TimeoutError, *_DRIVER_ERRORS):
            self._pool.terminate()


def _placed(result: Accepted | Rejected, batch: Sequence[NewEvent], base: int,
            where: dict[str, int]) -> Accepted | Rejected:
    """`result` with its rows at their positions (`base` + the plan's number) and
    `last_position` the newest position of its batch's events, duplicates included: once a
    replica has applied that position, it has applied the whole batch."""
    if isinstance(result, Rejected) or not batch:
        return result
    # An erased event id has no position: it adds nothing to wait for.
    return result._replace(rows=[(base + n, e) for n, e in result.rows], last_position=max(
        (where[e.event_id] for e in batch if e.event_id in where), default=0))


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
