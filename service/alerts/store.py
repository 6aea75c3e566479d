"""Durable alert state in its own SQLite file: rules, each group's state, the delivery outbox.

A state change and the delivery announcing it are written in one transaction, so a crash can
lose neither one without the other: after a restart the state is not decided again, and the
delivery is still pending. WAL and `synchronous=FULL`, like the event log.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Callable, Iterable

import aiosqlite
import msgspec

from service.alerts.rules import Rule

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rules (
        name TEXT PRIMARY KEY, body BLOB NOT NULL, created_us INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS states (
        rule TEXT NOT NULL, group_key TEXT NOT NULL, group_json BLOB NOT NULL,
        state TEXT NOT NULL, since_us INTEGER NOT NULL, value REAL,
        PRIMARY KEY (rule, group_key))""",
    """CREATE TABLE IF NOT EXISTS deliveries (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, rule TEXT NOT NULL,
        group_key TEXT NOT NULL, group_json BLOB NOT NULL, state TEXT NOT NULL,
        url TEXT NOT NULL, body BLOB NOT NULL, signature TEXT,
        created_us INTEGER NOT NULL, next_us INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'pending', last_status INTEGER, last_error TEXT,
        done_us INTEGER)""",
    "CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (status, rule, group_key, seq)",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_us)",
    f"PRAGMA user_version={SCHEMA_VERSION}",
)

_decode_rule = msgspec.json.Decoder(Rule).decode
_encode = msgspec.json.Encoder(order="sorted").encode


def group_key(group: dict) -> str:
    """The canonical text of a group (`{"user_id": "alice"}`), its identity in the tables."""
    return _encode(group).decode()


class State(msgspec.Struct, frozen=True):
    """One group of one rule: firing or resolved since `since_us`, with its last value."""

    rule: str
    group: dict
    state: str
    since_us: int
    value: float | None


class Change(msgspec.Struct, frozen=True):
    """A group's new state, and the delivery that announces it."""

    state: State
    delivery_id: str
    url: str
    body: bytes
    signature: str | None


class Attempt(msgspec.Struct, frozen=True):
    """How one attempt ended: `status` is 'delivered', 'pending' (retry at `next_us`) or
    'failed' (given up)."""

    delivery_id: str
    status: str
    http_status: int | None
    error: str | None
    next_us: int


class Delivery(msgspec.Struct, frozen=True):
    id: str
    rule: str
    group: dict
    state: str
    url: str
    body: bytes
    signature: str | None
    created_us: int
    next_us: int
    attempts: int
    status: str
    last_status: int | None
    last_error: str | None
    done_us: int | None


_DELIVERY_COLUMNS = ("id, rule, group_json, state, url, body, signature, created_us, next_us, "
                     "attempts, status, last_status, last_error, done_us")


# The oldest pending delivery of its (rule, group): the only one of the group that may be sent.
# Read through `deliveries_due` in time order, each row probing `deliveries_pending` once: a
# page of due deliveries costs its own size, however many are pending.
_GROUP_HEAD = ("d.status = 'pending' AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE "
               "e.status = 'pending' AND e.rule = d.rule AND e.group_key = d.group_key "
               "AND e.seq < d.seq)")


def _delivery(row) -> Delivery:
    return Delivery(row[0], row[1], msgspec.json.decode(row[2]), *row[3:])


def _read_rule(name: str, body: bytes) -> Rule | None:
    # A stored rule this version cannot read (a measure since removed) is left out, loudly,
    # so that the other rules still work.
    try:
        return _decode_rule(body)
    except msgspec.ValidationError as exc:
        log.warning("alert rule %r is not valid for this version and is skipped: %s", name, exc)
        return None


class AlertStoreError(Exception):
    """The alert file cannot be opened or written."""


class AlertStore:
    """Open with `await AlertStore.open(path)`; one connection, one transaction at a time."""

    def __init__(self, conn: aiosqlite.Connection):
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> "AlertStore":
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA busy_timeout=5000")
            # Deleted rows are zeroed, not left in free pages: erasure (`forget_groups`).
            await conn.execute("PRAGMA secure_delete=ON")
            async with conn.execute("PRAGMA user_version") as cur:
                (version,) = await cur.fetchone()
            if version > SCHEMA_VERSION:
                await conn.close()
                raise AlertStoreError(f"{path} has alert schema {version}, newer than this "
                                      f"service's {SCHEMA_VERSION}")
            for statement in _SCHEMA:
                await conn.execute(statement)
        except sqlite3.Error as exc:
            raise AlertStoreError(f"cannot open the alert file {path}: {exc}") from exc
        return cls(conn)

    async def close(self) -> None:
        await self._conn.close()

    async def _fetch(self, sql: str, params: Iterable = ()) -> list:
        async with self._conn.execute(sql, tuple(params)) as cur:
            return await cur.fetchall()

    async def _transaction(self, statements: list[tuple[str, tuple]],
                           guard: tuple[str, tuple] | None = None) -> list[int] | None:
        """Run `statements` in one transaction; returns each one's changed row count. With a
        `guard` query that finds no row, nothing is run and the answer is None."""
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                if guard is not None:
                    async with self._conn.execute(*guard) as cur:
                        if await cur.fetchone() is None:
                            await self._conn.execute("ROLLBACK")
                            return None
                counts = []
                for sql, params in statements:
                    async with self._conn.execute(sql, params) as cur:
                        counts.append(cur.rowcount)
                await self._conn.execute("COMMIT")
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
        return counts

    # -- rules ---------------------------------------------------------------------------------

    async def add_rule(self, rule: Rule, now_us: int) -> bool:
        """Store a new rule; False (and nothing stored) when the name is taken."""
        (count,) = await self._transaction([(
            "INSERT INTO rules (name, body, created_us) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING", (rule.name, msgspec.json.encode(rule), now_us))])
        return count == 1

    async def rules(self) -> list[tuple[Rule, int]]:
        """Every rule with its creation time, by name."""
        rows = await self._fetch("SELECT name, body, created_us FROM rules ORDER BY name")
        return [(rule, created) for name, body, created in rows
                if (rule := _read_rule(name, body)) is not None]

    async def rule(self, name: str) -> tuple[Rule, int] | None:
        rows = await self._fetch("SELECT body, created_us FROM rules WHERE name = ?", (name,))
        rule = _read_rule(name, rows[0][0]) if rows else None
        return (rule, rows[0][1]) if rule is not None else None

    async def delete_rule(self, name: str, now_us: int) -> bool:
        """Forget a rule and its states; its pending deliveries are cancelled, not sent."""
        counts = await self._transaction([
            ("DELETE FROM rules WHERE name = ?", (name,)),
            ("DELETE FROM states WHERE rule = ?", (name,)),
            ("UPDATE deliveries SET status = 'cancelled', done_us = ? "
             "WHERE rule = ? AND status = 'pending'", (now_us, name)),
        ])
        return counts[0] == 1

    # -- states --------------------------------------------------------------------------------

    async def states(self, rule: str | None = None, state: str | None = None) -> list[State]:
        """The states of one rule's groups (or every rule's), optionally only those in `state`."""
        where, params = [], []
        if rule is not None:
            where.append("rule = ?")
            params.append(rule)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        sql = ("SELECT rule, group_json, state, since_us, value FROM states"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY rule, group_key")
        return [State(r, msgspec.json.decode(g), s, since, value)
                for r, g, s, since, value in await self._fetch(sql, params)]

    async def record(self, rule: str, changes: list[Change], values: list[State],
                     now_us: int) -> bool:
        """In one transaction: each change's new state and its pending delivery, and the new
        value of groups whose state did not change. Nothing is written (False) when the rule
        was deleted meanwhile."""
        statements = []
        for change in changes:
            s = change.state
            key = group_key(s.group)
            statements.append((
                "INSERT INTO states (rule, group_key, group_json, state, since_us, value) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rule, group_key) DO UPDATE SET "
                "state = excluded.state, since_us = excluded.since_us, value = excluded.value",
                (s.rule, key, _encode(s.group), s.state, s.since_us, s.value)))
            statements.append((
                "INSERT INTO deliveries (id, rule, group_key, group_json, state, url, body, "
                "signature, created_us, next_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (change.delivery_id, s.rule, key, _encode(s.group), s.state, change.url,
                 change.body, change.signature, now_us, now_us)))
        statements += [("UPDATE states SET value = ? WHERE rule = ? AND group_key = ?",
                        (s.value, s.rule, group_key(s.group))) for s in values]
        if not statements:
            return True
        guard = ("SELECT 1 FROM rules WHERE name = ?", (rule,))
        return await self._transaction(statements, guard=guard) is not None

    async def forget_groups(self, match: Callable[[dict], bool]) -> int:
        """Delete the states and deliveries (sent or not) of every group `match` picks, for
        good: zeroed in the file and out of the WAL once this returns. Returns how many groups
        went."""
        rows = await self._fetch("SELECT group_key, group_json FROM states UNION "
                                 "SELECT group_key, group_json FROM deliveries")
        keys = sorted({key for key, group in rows if match(msgspec.json.decode(group))})
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            await self._transaction([
                (f"DELETE FROM states WHERE group_key IN ({marks})", tuple(chunk)),
                (f"DELETE FROM deliveries WHERE group_key IN ({marks})", tuple(chunk))])
        if keys:
            async with self._lock:
                await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(keys)

    # -- the outbox ----------------------------------------------------------------------------

    async def due(self, now_us: int, limit: int) -> list[Delivery]:
        """Pending deliveries whose time has come, each the oldest pending one of its group:
        a group's deliveries go out in the order its state changed."""
        rows = await self._fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d WHERE {_GROUP_HEAD} AND next_us <= ? "
            "ORDER BY next_us LIMIT ?", (now_us, limit))
        return [_delivery(row) for row in rows]

    async def next_due_us(self) -> int | None:
        """When the earliest sendable delivery is due (None when nothing is pending)."""
        rows = await self._fetch(
            f"SELECT next_us FROM deliveries d WHERE {_GROUP_HEAD} ORDER BY next_us LIMIT 1")
        return rows[0][0] if rows else None

    async def attempted(self, attempts: list[Attempt], now_us: int) -> None:
        """Record attempts, in one transaction. A delivery cancelled meanwhile stays cancelled."""
        await self._transaction([(
            "UPDATE deliveries SET attempts = attempts + 1, status = ?, last_status = ?, "
            "last_error = ?, next_us = ?, done_us = ? WHERE id = ? AND status = 'pending'",
            (a.status, a.http_status, a.error, a.next_us,
             None if a.status == "pending" else now_us, a.delivery_id)) for a in attempts])

    async def retry_pending_now(self, now_us: int) -> int:
        """Make every pending delivery due now (at startup); returns how many are pending."""
        (count,) = await self._transaction([(
            "UPDATE deliveries SET next_us = ? WHERE status = 'pending'", (now_us,))])
        return count

    async def deliveries(self, limit: int) -> list[Delivery]:
        """The delivery log, newest first."""
        rows = await self._fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries ORDER BY seq DESC LIMIT ?", (limit,))
        return [_delivery(row) for row in rows]
