"""Several replicas on one PostgreSQL log: ordering, tailing, convergence, lost connections.

Each in-process "replica" is what `create_app` builds for it: its own `PostgresStore` (own pool
and LISTEN connection), read models, `Tailer` and `Writer`. The read models here are the
tailer's interface (`position`, `apply_rows`) recording what they are given, so every test sees
exactly which positions each replica applied, in which order. `test_three_processes_...` runs
replicas in three processes; the real server processes are in tests/e2e/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import random

import asyncpg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import events.postgres_store as postgres_store
from events import codec
from events.postgres_store import PostgresStore
from events.store import Accepted, Rejected, StoreError, StoreUnavailable
from service.app import open_store
from service.config import Config
from service.ingest import parse_body
from service.tailer import Tailer, replica_health
from service.writer import Writer
from tests import factories
from tests.postgres import DSN, dsn_with_schema, fresh_schema


def batch(*events: dict):
    """Wire events through the real ingest path, ready for `append`."""
    return parse_body(json.dumps(list(events)).encode(), "application/json")


class Recorded:
    """Read models that record what they apply and fail loudly on a position out of order."""

    def __init__(self) -> None:
        self.position = 0
        self.rows: list[tuple[int, object]] = []

    async def apply_rows(self, rows) -> None:
        for position, record in rows:
            assert position > self.position, f"applied {position} after {self.position}"
            self.position = position
            self.rows.append((position, record))

    @property
    def seen(self) -> list[int]:
        return [position for position, _ in self.rows]


async def replay_of(store: PostgresStore) -> list[tuple[int, object]]:
    """A single replay of the final log: what every replica must have applied."""
    rows = await store.read(0, 1_000_000)
    return [(position, codec.decode(payload)) for position, _, payload, _ in rows]


@contextlib.asynccontextmanager
async def replicas(count: int, *, start_tailers: bool = True, poll_s: float = 0.05):
    """`count` replicas on one fresh schema: (store, models, tailer, writer) each."""
    async with fresh_schema("replicas") as schema:
        built = []
        try:
            for _ in range(count):
                store = await PostgresStore.open(DSN, schema=schema)
                await store.migrate()
                models = Recorded()
                tailer = Tailer(store, models, poll_s)
                if start_tailers:
                    await tailer.start()
                writer = Writer(store, models, 1_000_000, follower=tailer)
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


async def late_commit_seen_by_a_reader() -> tuple[list[int], list[int], list[int], bool]:
    """Hold append A open, commit a later append B meanwhile, then commit A.

    Returns (A's positions, B's positions, what a reader polling all along saw, whether B
    committed while A was still open)."""
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
            second = asyncio.create_task(
                second_store.append([batch(factories.started(request_id="b"))]))
            await asyncio.wait([second], timeout=5)
            concurrent = second.done()
            await asyncio.sleep(0.1)  # the reader polls meanwhile
            await transaction.commit()
            [result] = await second
            await until(lambda: result.last_position in seen)
            await asyncio.sleep(0.1)  # time for the reader to read A, if it ever will
        finally:
            reading = False
            await tail
            await held.close()
            await first_store.close()
            await second_store.close()
        return [p for p, _ in first.rows], [p for p, _ in result.rows], seen, concurrent


async def test_a_later_append_commits_first_and_is_read_after_the_earlier_one():
    """The out-of-order commit: B commits while A is open (no lock), yet A is read first."""
    a, b, seen, concurrent = await late_commit_seen_by_a_reader()
    assert concurrent, "the later append waited for the earlier one: appends are serialised"
    assert a[0] < b[0]
    assert seen == a + b  # nothing of B before A committed, and A in its place after


async def test_without_the_horizon_the_reader_would_skip_the_late_commit(monkeypatch):
    """The same scenario with the horizon removed from reads: B is read while A is open, and
    A, committed later below B, is never read. This is what the horizon prevents."""
    monkeypatch.setattr(postgres_store, "HORIZON_SQL", "9223372036854775807")
    a, b, seen, _ = await late_commit_seen_by_a_reader()
    assert seen[:1] == b and not set(a) & set(seen)


async def test_a_commit_waits_to_be_visible_behind_an_older_open_append():
    """Read-your-writes across replicas: B's answer comes once A (older, still open) ended,
    and both replicas apply A before B."""
    async with replicas(2) as (schema, [(store, mine, _, _), (_, theirs, _, their_writer)]):
        held = await asyncpg.connect(dsn_with_schema(schema))
        try:
            transaction = held.transaction()
            await transaction.start()
            [a] = await store.append_in(held, [batch(factories.started("held", "a"))])
            b = asyncio.create_task(their_writer.submit(batch(factories.started("late", "b"))))
            await asyncio.sleep(0.3)
            assert not b.done(), "B was acknowledged before an older append below it ended"
            assert mine.seen == theirs.seen == []
            await transaction.commit()
            result = await asyncio.wait_for(b, 5)
        finally:
            await held.close()
        expected = [a.rows[0][0], result.rows[0][0]]
        assert theirs.seen == expected  # applied when the answer was sent
        await until(lambda: mine.seen == expected)


async def test_an_open_transaction_elsewhere_shows_in_health_as_behind():
    """A writing transaction left open anywhere on the server holds the horizon: the replica
    reports it (503 with the reason) instead of looking healthy, and recovers after."""
    async with replicas(1) as (schema, [(_, _, _, their_writer)]):
        store = await PostgresStore.open(DSN, schema=schema)
        models = Recorded()
        tailer = Tailer(store, models, poll_s=0.05, max_lag_s=0.3)
        await tailer.start()
        holder = await asyncpg.connect(DSN)
        try:
            blocker = holder.transaction()
            await blocker.start()
            await holder.fetchval("SELECT pg_current_xact_id()")
            done = asyncio.create_task(their_writer.submit(batch(factories.started("s", "r"))))
            await asyncio.sleep(0.8)
            status, body = replica_health(models.position, tailer)
            assert status == 503 and "commit horizon" in body.reason, body
            await blocker.rollback()
            result = await asyncio.wait_for(done, 5)
            await until(lambda: models.position == result.last_position)
            await until(lambda: replica_health(models.position, tailer)[0] == 200)
        finally:
            await holder.close()
            await tailer.close()
            await store.close()


async def test_own_commit_applies_foreign_rows_before_it():
    """Another replica commits 8-9 before ours commits 10-12: ours applies 8-9 first."""
    async with replicas(2, start_tailers=False) as (_, [(_, mine, _, my_writer),
                                                        (_, theirs, _, their_writer)]):
        for rid in range(7):
            await my_writer.submit(batch(factories.started(request_id=f"mine-{rid}")))
        foreign = await their_writer.submit(batch(factories.started("other", "8"),
                                                  factories.started("other", "9")))
        assert len(mine.seen) == 7  # its tailer is not running: 8-9 are not applied yet
        result = await my_writer.submit(batch(*(factories.started(request_id=f"late-{i}")
                                                for i in range(3))))
        own = [p for p, _ in result.rows]
        assert mine.seen[-5:] == [p for p, _ in foreign.rows] + own
        assert len(set(mine.seen)) == len(mine.seen) == 12
        assert theirs.seen == mine.seen[:9]


async def test_replicas_converge_and_keep_the_rules_across_processes():
    """Three replicas ingest at once, partly the same batches; all end with the same rows."""
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

        final = await replay_of(built[0][0])
        assert len(final) == len(wire)
        await until(lambda: all(models.position == final[-1][0] for _, models, _, _ in built))
        for _, models, _, _ in built:
            assert models.rows == final


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


async def test_a_replica_whose_connections_are_terminated_keeps_following():
    """Issue 12 item 5: every connection of a replica terminated, three times; its tailer
    lives on, says why it is not following meanwhile, and catches up by itself."""
    async with replicas(1, poll_s=0.05) as (schema, [(_, _, _, their_writer)]):
        # The victim's connections carry their own application_name: only they are killed.
        name = f"victim-{schema}"
        store = await PostgresStore.open(f"{dsn_with_schema(schema)}&application_name={name}")
        models = Recorded()
        tailer = Tailer(store, models, poll_s=0.05)
        await tailer.start()
        writer = Writer(store, models, 1_000_000, follower=tailer)
        writer.start()
        admin = await asyncpg.connect(DSN)
        try:
            failures = []
            for round_ in range(3):
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = $1", name)
                assert killed >= 2  # its pool and its LISTEN connection
                result = await their_writer.submit(
                    batch(factories.started("terminated", f"r{round_}")))
                assert isinstance(result, Accepted)
                deadline = asyncio.get_running_loop().time() + 10
                while models.position < result.last_position:
                    assert asyncio.get_running_loop().time() < deadline, "it stopped following"
                    status, body = replica_health(models.position, tailer)
                    if status == 503:
                        failures.append(body.reason)
                    await asyncio.sleep(0.005)
                assert not tailer._task.done()
            # A 503, if one was caught between the kill and the reconnect, says why.
            assert all("not following the log" in reason for reason in failures), failures
            await until(lambda: replica_health(models.position, tailer)[0] == 200)
            # The replica's own writes work again too.
            own = await writer.submit(batch(factories.started("terminated", "own")))
            assert isinstance(own, Accepted) and models.position == own.last_position
        finally:
            await admin.close()
            await writer.close()
            await tailer.close()
            await store.close()


async def test_the_tailer_survives_any_error_says_why_and_recovers(caplog):
    """Whatever a read raises (here asyncpg's own InternalClientError, as a connection closed
    mid-operation gives), the tailer lives on: 503 with the reason, then it follows again."""
    async with replicas(1) as (_, [(store, _, _, their_writer)]):
        broken = {"on": True}

        class Flaky:
            listening = True

            async def listen(self, on_append):
                pass

            async def read(self, after, limit):
                if broken["on"]:
                    raise asyncpg.InternalClientError("cannot perform operation: connection is "
                                                      "closed")
                return await store.read(after, limit)

            async def horizon(self):
                return await store.horizon()

        models = Recorded()
        tailer = Tailer(Flaky(), models, poll_s=0.02)
        await tailer.start()
        try:
            result = await their_writer.submit(batch(factories.started("flaky", "r")))
            await asyncio.sleep(0.1)
            status, body = replica_health(models.position, tailer)
            assert status == 503 and "InternalClientError" in body.reason, body
            assert not tailer._task.done()
            assert "cannot follow the log" in caplog.text
            broken["on"] = False
            await until(lambda: models.position == result.last_position)
            await until(lambda: replica_health(models.position, tailer)[0] == 200)
            assert "following the log again" in caplog.text
        finally:
            await tailer.close()


def test_driver_errors_become_the_ports_errors():
    from events.postgres_store import _translate

    assert isinstance(_translate(ConnectionRefusedError(111, "refused")), StoreUnavailable)
    assert isinstance(_translate(asyncpg.exceptions.ReadOnlySQLTransactionError("ro")),
                      StoreUnavailable)
    assert isinstance(_translate(asyncpg.exceptions.DiskFullError("full")), StoreUnavailable)
    assert isinstance(_translate(asyncpg.InternalClientError("cannot perform operation: "
                                                              "connection is closed")),
                      StoreUnavailable)
    assert isinstance(_translate(asyncpg.ConnectionDoesNotExistError("gone")), StoreUnavailable)
    assert isinstance(_translate(asyncpg.InterfaceError("pool is closing")), StoreUnavailable)
    other = _translate(asyncpg.exceptions.UniqueViolationError("dup"))
    assert isinstance(other, StoreError) and not isinstance(other, StoreUnavailable)


async def test_driver_errors_of_a_closed_store_are_translated():
    """Whatever asyncpg raises on a store whose pool is gone comes out as the port's error."""
    async with fresh_schema("closed") as schema:
        store = await PostgresStore.open(DSN, schema=schema)
        await store.migrate()
        await store.close()
        for call in (store.read(0, 1), store.last_position(), store.horizon(),
                     store.append([batch(factories.started())])):
            with pytest.raises(StoreUnavailable):
                await call


async def test_a_postgres_url_selects_the_shared_store_and_files_per_replica():
    async with fresh_schema("config") as schema:
        config = Config(db=dsn_with_schema(schema), port=8123)
        store = await open_store(config)
        try:
            assert isinstance(store, PostgresStore) and store.schema == schema
            assert store.shared and not store.limits_size
            assert await store.last_position() == 0  # migrated
        finally:
            await store.close()
    assert config.facts_path == "data/replica-8123.facts.duckdb"
    assert Config(db="data/x.db").facts_path == "data/x.db.facts.duckdb"


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

            async def horizon(self):
                return await store.horizon()

        tailer = Tailer(Deaf(), models, poll_s=0.05)
        await tailer.start()
        try:
            result = await their_writer.submit(batch(factories.started("polled", "r")))
            await until(lambda: models.position == result.last_position, timeout=5)
        finally:
            await tailer.close()


# --- three processes, random commit delays: every replica equals one replay of the log -----

def _process(schema: str, events: list[dict], delays: list[float], barrier) -> list:
    """One replica in its own process: a real Writer and Tailer on a store whose commits are
    delayed at random; returns the (position, event id) rows its read models applied."""
    return asyncio.run(_replica_process(schema, events, delays, barrier))


class _SlowCommits(PostgresStore):
    """A store that sleeps inside each append transaction before its commit."""

    delays: list[float] = []

    async def append(self, batches):
        delay = self.delays.pop() if self.delays else 0.0
        try:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    results = await self.append_in(conn, batches)
                    await asyncio.sleep(delay)
                await self._notify(conn)
            return results
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            return await PostgresStore.append(self, batches)


async def _replica_process(schema, events, delays, barrier):
    store = await _SlowCommits.open(DSN, schema=schema)
    store.delays = list(delays)
    models = Recorded()
    tailer = Tailer(store, models, poll_s=0.05)
    await tailer.start()
    writer = Writer(store, models, 1_000_000, follower=tailer)
    writer.start()
    wait = asyncio.get_running_loop().run_in_executor
    try:
        await wait(None, barrier.wait)  # all three start appending together
        # Two requests at a time, so the writer's groups vary and commits interleave.
        for pair in range(0, len(events), 6):
            chunks = _chunks(events[pair:pair + 6])
            answers = await asyncio.gather(*(writer.submit(batch(*c)) for c in chunks))
            assert all(isinstance(a, Accepted) for a in answers), answers
            for answer in answers:  # read-your-writes: acknowledged means applied here
                assert models.position >= answer.last_position
        await wait(None, barrier.wait)  # everybody's appends are committed
        final = await store.last_position()
        await until(lambda: models.position >= final)
        return [(p, codec.encode(r)) for p, r in models.rows]
    finally:
        await writer.close()
        await tailer.close()
        await store.close()


def _chunks(events: list[dict]) -> list[list[dict]]:
    return [events[i:i + 3] for i in range(0, len(events), 3)]


@pytest.fixture(scope="module")
def process_pool():
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(3) as pool:
        yield manager, pool


@st.composite
def plans(draw):
    """Events for 3 processes (some posted by two of them) and each process's commit delays."""
    count = draw(st.integers(3, 40))
    events = [factories.started(f"s{n % 5}", f"r{n}", event_id=f"e{n}") for n in range(count)]
    shares = [[], [], []]
    for event in events:
        owners = draw(st.sets(st.integers(0, 2), min_size=1, max_size=2))
        for owner in owners:
            shares[owner].append(event)
    delays = [draw(st.lists(st.floats(0, 0.05), min_size=0, max_size=15)) for _ in range(3)]
    return count, shares, delays


@settings(max_examples=12, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=plans())
def test_three_processes_with_random_commit_delays_equal_one_replay(process_pool, plan):
    count, shares, delays = plan
    note(f"events per process: {[[e['event_id'] for e in s] for s in shares]}; "
         f"commit delays: {delays}")
    manager, pool = process_pool

    async def run():
        async with fresh_schema("procs") as schema:
            store = await PostgresStore.open(DSN, schema=schema)
            try:
                await store.migrate()
                barrier = manager.Barrier(3)
                pending = pool.starmap_async(_process, [(schema, shares[n], delays[n], barrier)
                                                        for n in range(3)])
                applied = await asyncio.get_running_loop().run_in_executor(
                    None, pending.get, 120)
                final = [(p, payload) for p, _, payload, _ in await store.read(0, 10_000)]
            finally:
                await store.close()
        return applied, final

    applied, final = asyncio.run(run())
    assert len(final) == count  # each event stored once, whoever posted it
    for rows in applied:
        assert rows == final
