"""Group commits larger than one SQL statement can carry: the SQLite store splits its inserts
(at most `_CHUNK` bound values per statement) and must still store every row, in order, once."""

from __future__ import annotations

import msgspec

from events import sqlite_store
from events.schema import LlmRequestStarted
from events.sqlite_store import SQLiteStore
from events.store import Accepted, Rejected
from service.ingest import prepare
from tests.factories import started


def batch(first: int, count: int):
    wire = [started(session_id=f"s{n % 97}", request_id=f"r{n}", event_id=f"e{n}")
            for n in range(first, first + count)]
    return prepare(msgspec.convert(wire, list[LlmRequestStarted]))


async def test_groups_spanning_several_insert_statements_are_stored_whole(tmp_path):
    rows_per_statement = sqlite_store._CHUNK // 5
    store = await SQLiteStore.open(tmp_path / "bulk.db")
    await store.migrate()
    try:
        big, small = batch(0, 2 * rows_per_statement + 7), batch(10_000, 3)
        results = await store.append([big, small])
        assert [type(r) for r in results] == [Accepted, Accepted]
        assert results[1].last_position == len(big) + len(small)
        rows = await store.read(0, 100_000)
        assert [r[0] for r in rows] == list(range(1, len(big) + len(small) + 1))
        assert [r[1] for r in rows] == [e.event_id for e in big + small]

        # Every slot made it into the index too: a second start of any request conflicts.
        again = batch(2 * rows_per_statement + 6, 1)
        clash = [e._replace(event_id="other-id") for e in again]
        [rejected] = await store.append([clash])
        assert isinstance(rejected, Rejected)
        [dup] = await store.append([again])
        assert dup.duplicates == 1 and dup.appended == 0
        assert await store.last_position() == len(big) + len(small)
    finally:
        await store.close()
