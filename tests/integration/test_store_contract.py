"""The store contract: every backend must pass these tests unchanged.

A backend joins by adding a factory to `BACKENDS` (an async context manager yielding an opened,
migrated, empty store).
"""

from __future__ import annotations

import contextlib

import pytest

from events import codec
from events.records import Completed, Erased, Failed, Started
from events.postgres_store import PostgresStore
from events.sqlite_store import SQLiteStore
from events.store import Accepted, NewEvent, Rejected, slot_key
from tests.postgres import DSN, fresh_schema


@contextlib.asynccontextmanager
async def sqlite_backend(tmp_path):
    store = await SQLiteStore.open(tmp_path / "contract.db")
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def postgres_backend(tmp_path):
    async with fresh_schema("contract") as schema:
        store = await PostgresStore.open(DSN, schema=schema)
        await store.migrate()
        try:
            yield store
        finally:
            await store.close()


BACKENDS = {"sqlite": sqlite_backend, "postgres": postgres_backend}


@pytest.fixture(params=sorted(BACKENDS))
async def store(request, tmp_path):
    async with BACKENDS[request.param](tmp_path) as store:
        yield store


def new(record, event_id=None) -> NewEvent:
    return NewEvent(event_id or f"{record.session_id}/{record.request_id}/{type(record).__name__}",
                    codec.TYPE_CODES[type(record)], codec.encode(record), slot_key(record), record)


def start(sid="s", rid="r", ts=1):
    return new(Started(sid, rid, "m", ts))


def done(sid="s", rid="r", ts=2, tokens=3):
    return new(Completed(sid, rid, "m", ts, 10.0, tokens, 1, tokens + 1))


def fail(sid="s", rid="r", ts=2):
    return new(Failed(sid, rid, "m", ts, "Timeout"))


async def test_empty_log(store):
    assert await store.last_position() == 0
    assert await store.read(0, 10) == []


async def test_positions_increase_and_rows_read_back(store):
    """Positions increase in batch order; they may have holes (PostgreSQL's jump between
    transactions), so the contract never computes one position from another."""
    [result] = await store.append([[start(rid="a"), done(rid="a"), start(rid="b")]])
    assert isinstance(result, Accepted)
    assert (result.appended, result.duplicates) == (3, 0)
    positions = [p for p, _ in result.rows]
    assert 0 < positions[0] < positions[1] < positions[2] == result.last_position
    rows = await store.read(0, 10)
    assert [tuple(r[:3]) for r in rows] == [(positions[0], "s/a/Started", start(rid="a").payload),
                                            (positions[1], "s/a/Completed", done(rid="a").payload),
                                            (positions[2], "s/b/Started", start(rid="b").payload)]
    assert all(isinstance(r[3], int) and r[3] > 0 for r in rows)
    assert await store.last_position() == positions[2]
    assert [r[0] for r in await store.read(positions[0], 1)] == [positions[1]]
    assert await store.read(positions[2], 10) == []
    [later] = await store.append([[start(rid="c")]])
    assert later.rows[0][0] > positions[2]
    assert [r[0] for r in await store.read(positions[2], 10)] == [later.rows[0][0]]


async def test_same_event_again_is_a_duplicate(store):
    [first] = await store.append([[start(), done()]])
    [result] = await store.append([[start(), done(), start(rid="x")]])
    assert (result.appended, result.duplicates) == (1, 2)
    assert result.last_position == result.rows[0][0] > first.last_position
    assert await store.last_position() == result.last_position
    assert len(await store.read(0, 10)) == 3


async def test_a_batch_of_duplicates_is_visible_at_its_last_position(store):
    """`last_position` is a position where a reader has all of the batch, within the log."""
    [first] = await store.append([[start(rid="1"), start(rid="2")]])
    await store.append([[start(rid="3")]])
    [one, both] = await store.append([[start(rid="1")], [start(rid="2"), start(rid="1")]])
    assert (one.appended, one.duplicates, both.appended, both.duplicates) == (0, 1, 0, 2)
    end = await store.last_position()
    assert first.rows[0][0] <= one.last_position <= end
    assert first.last_position <= both.last_position <= end


async def test_same_event_id_with_other_content_is_rejected_whole(store):
    [first] = await store.append([[start()]])
    changed = new(Started("s", "r", "other-model", 1), event_id="s/r/Started")
    [result] = await store.append([[start(rid="fresh"), changed]])
    assert isinstance(result, Rejected)
    assert [(i.index, i.path) for i in result.details] == [(1, "$.event_id")]
    # Nothing of the batch was stored.
    assert await store.last_position() == first.last_position
    assert len(await store.read(0, 10)) == 1


async def test_one_terminal_event_per_request(store):
    await store.append([[done()]])
    [result] = await store.append([[fail(ts=5)]])
    assert isinstance(result, Rejected)
    assert result.details[0].path == "$.request_id"
    [inside] = await store.append([[done(rid="q"), fail(rid="q")]])
    assert isinstance(inside, Rejected) and inside.details[0].index == 1
    assert [r[1] for r in await store.read(0, 10)] == ["s/r/Completed"]


async def test_one_started_event_per_request(store):
    await store.append([[start()]])
    [result] = await store.append([[start(ts=9)._replace(event_id="other")]])
    assert isinstance(result, Rejected)


async def test_request_ids_are_scoped_by_session(store):
    [result] = await store.append([[done(sid="a"), done(sid="b")]])
    assert isinstance(result, Accepted) and result.appended == 2


async def test_a_group_commits_good_batches_and_rejects_bad_ones(store):
    results = await store.append([[start(rid="1")], [done(rid="2"), done(rid="2", ts=7)
                                                     ._replace(event_id="x")], [start(rid="3")]])
    assert [type(r) for r in results] == [Accepted, Rejected, Accepted]
    assert results[2].rows[0][0] > results[0].rows[0][0]
    assert [r[1] for r in await store.read(0, 10)] == ["s/1/Started", "s/3/Started"]


async def test_a_later_batch_in_a_group_sees_an_earlier_one(store):
    results = await store.append([[done()], [done()], [fail()]])
    assert [type(r) for r in results] == [Accepted, Accepted, Rejected]
    assert results[1].duplicates == 1


async def test_large_batches(store):
    batch = [start(rid=str(i)) for i in range(12_000)]
    [result] = await store.append([batch])
    assert result.appended == 12_000
    [again] = await store.append([batch])
    assert again.duplicates == 12_000
    assert len(await store.read(0, 100_000)) == 12_000


async def test_strings_that_look_like_sql_or_are_odd(store):
    odd = ["'; DROP TABLE events; --", "a/b%2F", 'q"uote', "nul\x00byte", "emoji 🚀", "ü" * 256]
    batch = [new(Started(s, s, s, 1), event_id=s[:128]) for s in odd]
    [result] = await store.append([batch])
    assert result.appended == len(odd)
    rows = await store.read(0, 10)
    assert [codec.decode(r[2]).session_id for r in rows] == odd
    assert [r[1] for r in rows] == [s[:128] for s in odd]


# ---- erasure -------------------------------------------------------------------------------------

async def test_erase_deletes_the_rows_and_appends_one_tombstone(store):
    [result] = await store.append([[start(rid="a"), done(rid="a"), start(rid="b"),
                                    start(sid="other", rid="a")]])
    (pa, _), (pd, _), (pb, _), (po, _) = result.rows
    erasure = await store.erase([pd, pa, 10**15], "session", "k")
    assert erasure.count == 2
    assert erasure.position > po and erasure.position == await store.last_position()
    rows = await store.read(0, 10)
    assert [r[0] for r in rows] == [pb, po, erasure.position]
    tomb = codec.decode(rows[-1][2])
    assert isinstance(tomb, Erased)
    assert (tomb.positions, tomb.scope, tomb.key_hash, tomb.count) == ((pa, pd), "session", "k", 2)
    [later] = await store.append([[start(rid="c")]])
    assert later.rows[0][0] > erasure.position


async def test_erasing_nothing_appends_nothing(store):
    [result] = await store.append([[start()]])
    end = await store.last_position()
    assert (await store.erase([result.rows[0][0] + 10**12], "user", "k")).count == 0
    first = await store.erase([result.rows[0][0]], "user", "k")
    assert first.count == 1
    again = await store.erase([result.rows[0][0], first.position], "user", "k")
    assert again == (0, 0, [])  # a tombstone is never erased
    assert [r[0] for r in await store.read(0, 10)] == [first.position]
    assert first.position > end


async def test_an_erased_event_posted_again_is_a_duplicate_whatever_its_content(store):
    [result] = await store.append([[start(), done()]])
    await store.erase([p for p, _ in result.rows], "session", "k")
    [again] = await store.append([[start(), done(tokens=99)]])
    assert (again.appended, again.duplicates) == (0, 2)
    assert [codec.decode(r[2]).__class__ for r in await store.read(0, 10)] == [Erased]
    # The request's slots went with it: the same request under new event ids is new data.
    [fresh] = await store.append([[new(Started("s", "r", "m", 5), event_id="new-s"),
                                   new(Completed("s", "r", "m", 6, 1.0, 1, 1, 2), "new-c")]])
    assert fresh.appended == 2
    assert await store.last_position() == fresh.last_position


async def test_erase_many_positions(store):
    [result] = await store.append([[start(rid=str(i)) for i in range(12_000)]])
    positions = [p for p, _ in result.rows]
    erasure = await store.erase(positions[::2], "retention", "")
    assert erasure.count == 6_000
    rows = await store.read(0, 100_000)
    assert [r[0] for r in rows] == positions[1::2] + [erasure.position]
