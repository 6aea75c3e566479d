"""Several replicas on one PostgreSQL log, in one process: ordering, tailing, convergence.

Each "replica" is what `create_app` builds for it: its own `PostgresStore` (own pool and
LISTEN connection), `ReadModels`, `Tailer` and `Writer`. The real server processes are in
tests/e2e/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random

import asyncpg

from events.postgres_store import PostgresStore
from events.store import Accepted, Rejected, StoreUnavailable
from projections.replay import (ReadModels, encode_snapshot, load_snapshot, replay,
                                write_snapshot)
from service.app import open_store
from service.config import Config
from service.ingest import parse_body
from service.tailer import Tailer
from service.writer import Writer
from tests import factories
from tests.postgres import DSN, dsn_with_schema, fresh_schema


def batch(*events: dict):
    """Wire events through the real ingest path, ready for `append`."""
    return parse_body(json.dumps(list(events)).encode(), "application/json")


class CheckedModels(ReadModels):
    """Read models that fail loudly unless every position comes once, in order, without gaps."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def apply(self, position, record) -> None:
        assert position == self.position + 1, f"applied {position} after {self.position}"
        self.seen.append(position)
        super().apply(position, record)


@contextlib.asynccontextmanager
async def replicas(count: int, *, start_tailers: bool = True, poll_s: float = 0.05):
    """`count` replicas on one fresh schema: (store, models, tailer, writer) each."""
    async with fresh_schema("replicas") as schema:
        built = []
        try:
            for _ in range(count):
                store = await PostgresStore.open(DSN, schema=schema)
                await store.migrate()
                models = CheckedModels()
                await replay(store, models)
                tailer = Tailer(store, models, poll_s)
                if start_tailers:
                    await tailer.start()
                writer = Writer(store, models, 1_000_000, tailer=tailer)
                writer.start()
                built.append((store, models, tailer, writer))
            yield schema, built
        finally:
            for store, _models, tailer, writer in built:
                await writer.close()
                await tailer.close()
                await store.close()


async def until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_an_append_cannot_commit_before_an_earlier_one():
    """Try to commit out of order: hold one append open, commit another meanwhile."""
    async with fresh_schema("order") as schema:
        first_store = await PostgresStore.open(DSN, schema=schema)
        second_store = await PostgresStore.open(DSN, schema=schema)
        await first_store.migrate()
        held = await asyncpg.connect(dsn_with_schema(schema))
        seen: list[int] = []
        reading = True

        async def reader():
            # A tailer in its simplest form: read after the last position seen, forever.
            while reading:
                rows = await second_store.read(seen[-1] if seen else 0, 100)
                seen.extend(row[0] for row in rows)
                await asyncio.sleep(0.001)

        tail = asyncio.create_task(reader())
        try:
            transaction = held.transaction()
            await transaction.start()
            [first] = await first_store.append_in(held, [batch(factories.started(request_id="a"))])
            assert first.rows[0][0] == 1  # position 1 taken, not committed
            second = asyncio.create_task(
                second_store.append([batch(factories.started(request_id="b"))]))
            await asyncio.sleep(0.3)
            assert not second.done(), "a later append committed while an earlier one was open"
            assert seen == []
            await transaction.commit()
            [result] = await second
            assert [p for p, _ in result.rows] == [2]
            await until(lambda: len(seen) == 2)
        finally:
            reading = False
            await tail
            await held.close()
            await first_store.close()
            await second_store.close()
        assert seen == [1, 2]


async def test_the_tailer_waits_at_a_gap_left_by_a_late_commit():
    """A writer that ignores the lock commits position 2 before 1: the tailer must not skip 1."""
    async with replicas(1, start_tailers=False) as (schema, [(store, models, tailer, _)]):
        early = await asyncpg.connect(dsn_with_schema(schema))
        late = await asyncpg.connect(dsn_with_schema(schema))
        [one], [two] = batch(factories.started(request_id="1")), batch(factories.started(request_id="2"))
        insert = ("INSERT INTO events (position, event_id, type, payload, recorded_at) "
                  "VALUES ($1, $2, $3, $4, 0)")
        try:
            transaction = early.transaction()
            await transaction.start()
            await early.execute(insert, 1, one.event_id.encode(), one.type_code, one.payload)
            await late.execute(insert, 2, two.event_id.encode(), two.type_code, two.payload)
            assert [r[0] for r in await store.read(0, 10)] == [2]
            assert await tailer.catch_up() == 0
            assert models.position == 0
            await transaction.commit()
            assert await tailer.catch_up() == 2
            assert models.seen == [1, 2]
        finally:
            await early.close()
            await late.close()


async def test_own_commit_applies_foreign_rows_before_it():
    """Applied up to 7; another replica commits 8-9; ours commits 10-12: 8-9 come first."""
    async with replicas(2, start_tailers=False) as (_, [(_, mine, _, my_writer),
                                                        (_, _, _, their_writer)]):
        for rid in range(7):
            await my_writer.submit(batch(factories.started(request_id=f"mine-{rid}")))
        await their_writer.submit(batch(factories.started("other", "8"),
                                        factories.started("other", "9")))
        assert mine.position == 7  # its tailer is not running: 8-9 are not applied yet
        result = await my_writer.submit(batch(*(factories.started(request_id=f"late-{i}")
                                                for i in range(3))))
        assert [p for p, _ in result.rows] == [10, 11, 12]
        assert mine.seen == list(range(1, 13))
        assert "other" in mine.metrics.state.sessions


async def test_replicas_converge_and_keep_the_rules_across_processes():
    """Three replicas ingest at once, partly the same batches; all end with the same metrics."""
    rng = random.Random(8)
    sessions = [f"s{n}" for n in range(30)]
    requests = [(sid, f"r{n}") for sid in sessions for n in range(10)]
    wire = []
    for sid, rid in requests:
        wire.append(factories.started(sid, rid, event_id=f"{sid}-{rid}-s"))
        wire.append(factories.completed(sid, rid, prompt_tokens=rng.randint(1, 99),
                                        event_id=f"{sid}-{rid}-c"))
    rng.shuffle(wire)
    batches = [wire[i:i + 7] for i in range(0, len(wire), 7)]
    async with replicas(3) as (_, built):
        writers = [writer for _, _, _, writer in built]

        async def ingest(writer, mine):
            return [await writer.submit(batch(*events)) for events in mine]

        # Every batch goes to two replicas at the same time: one appends, the other finds
        # duplicates. Then a second terminal event per request is a conflict on any replica.
        plans = [[b for n, b in enumerate(batches) if n % 3 != k] for k in range(3)]
        results = await asyncio.gather(*(ingest(w, p) for w, p in zip(writers, plans)))
        flat = [r for rs in results for r in rs]
        assert all(isinstance(r, Accepted) for r in flat)
        assert sum(r.appended for r in flat) == len(wire)
        assert sum(r.duplicates for r in flat) == len(wire)
        sid, rid = requests[0]
        conflict = await writers[2].submit(batch(factories.failed(sid, rid, event_id="late-fail")))
        assert isinstance(conflict, Rejected)

        total = len(wire)
        await until(lambda: all(models.position == total for _, models, _, _ in built))
        for _, models, _, _ in built:
            assert models.seen == list(range(1, total + 1))
        # Live state on every replica equals a fresh replay of the shared log.
        replayed = ReadModels()
        await replay(built[0][0], replayed)
        assert len(replayed.metrics.state.sessions) == len(sessions)
        expected = encode_snapshot(replayed, None)  # every projection's state and position
        for _, models, _, _ in built:
            assert encode_snapshot(models, None) == expected


async def test_a_snapshot_taken_while_the_tailer_applies_is_usable(tmp_path):
    """The state may move while `write_snapshot` reads the log; the snapshot must still load."""
    async with replicas(2, start_tailers=False) as (_, [(store, models, tailer, _),
                                                        (_, _, _, their_writer)]):
        for rid in ("1", "2"):
            await their_writer.submit(batch(factories.started(request_id=rid)))
        await tailer.catch_up()
        await their_writer.submit(batch(factories.started(request_id="3")))

        class TailedDuringReads:
            """The store, with the tailer applying new rows while each read is in flight."""

            async def read(self, after, limit):
                await tailer.catch_up()
                return await store.read(after, limit)

        path = tmp_path / "replica.snapshot"
        assert await write_snapshot(path, models, TailedDuringReads()) == 3
        restored = ReadModels()
        assert await load_snapshot(path, restored, store) == 3
        assert encode_snapshot(restored, None) == encode_snapshot(models, None)


async def test_a_lost_listen_connection_is_reopened_and_nothing_is_missed():
    async with replicas(2, poll_s=0.05) as (schema, [(store, models, _, _),
                                                    (_, _, _, their_writer)]):
        admin = await asyncpg.connect(DSN)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()", store.channel)
        finally:
            await admin.close()
        assert killed >= 1
        result = await their_writer.submit(batch(factories.started("after-loss", "r")))
        await until(lambda: models.position == result.last_position)
        await until(lambda: store.listening)


def test_driver_errors_become_the_ports_errors():
    from events.postgres_store import _translate
    from events.store import StoreError, StoreUnavailable

    assert isinstance(_translate(ConnectionRefusedError(111, "refused")), StoreUnavailable)
    assert isinstance(_translate(asyncpg.exceptions.ReadOnlySQLTransactionError("ro")),
                      StoreUnavailable)
    assert isinstance(_translate(asyncpg.exceptions.DiskFullError("full")), StoreUnavailable)
    other = _translate(asyncpg.exceptions.UniqueViolationError("dup"))
    assert isinstance(other, StoreError) and not isinstance(other, StoreUnavailable)


async def test_a_postgres_url_selects_the_shared_store_and_a_snapshot_per_replica():
    async with fresh_schema("config") as schema:
        config = Config(db=dsn_with_schema(schema), port=8123)
        store = await open_store(config)
        try:
            assert isinstance(store, PostgresStore) and store.schema == schema
            assert await store.last_position() == 0  # migrated
        finally:
            await store.close()
    assert config.snapshot_path == "data/replica-8123.snapshot"
    assert Config(db="data/x.db").snapshot_path == "data/x.db.snapshot"


async def test_without_notifications_the_tailer_polls():
    """LISTEN impossible (e.g. a pooler in transaction mode): rows still arrive, by polling."""
    async with replicas(2, start_tailers=False) as (_, [(store, models, _, _),
                                                        (_, _, _, their_writer)]):
        class Deaf:
            listening = False

            async def listen(self, on_append):
                raise StoreUnavailable("LISTEN is not available")

            async def read(self, after, limit):
                return await store.read(after, limit)

        tailer = Tailer(Deaf(), models, poll_s=0.05)
        await tailer.start()
        try:
            result = await their_writer.submit(batch(factories.started("polled", "r")))
            await until(lambda: models.position == result.last_position, timeout=5)
        finally:
            await tailer.close()
