"""How an apply pairs a request's two events with what the facts already hold, on a real DuckDB
file: in either order, in one apply or two, across a reopen and an erasure; a second event of
one kind keeps the first (`projections.facts._apply`). An apply skips the lookups in
`pending` and `unstarted` while it knows them empty, so every case here also checks that the
facts keep knowing what those tables hold."""

from __future__ import annotations

import msgspec
import pytest

from events.records import Erased
from events.schema import WireEvent
from projections.engine import Engine
from projections.facts import Facts
from projections.prices import default_prices
from service.ingest import prepare
from tests import factories as f

_decode = msgspec.json.Decoder(WireEvent)


def record(event: dict):
    [prepared] = prepare([_decode.decode(msgspec.json.encode(event))])
    return prepared.record


class Log:
    """Facts in a DuckDB file, fed rows at increasing positions."""

    def __init__(self, path):
        self.path = path
        self.position = 0
        self.engine = Engine.open(path)
        self.facts = None

    async def open(self) -> "Log":
        self.facts = await Facts.open(self.engine, default_prices())
        return self

    async def reopen(self) -> None:
        self.engine.close()
        self.engine = Engine.open(self.path)
        await self.open()

    async def apply(self, *events: dict) -> list[int]:
        rows = []
        for event in events:
            self.position += 1
            rows.append((self.position, record(event)))
        await self.facts.apply_rows(rows)
        return [p for p, _ in rows]

    async def erase(self, positions: list[int]) -> None:
        self.position += 1
        await self.facts.apply_rows([(self.position, Erased(tuple(positions), "session", "",
                                                            len(positions), 0))])

    async def table(self, name: str, columns: str = "request_id, start_pos, end_pos, status"):
        return await self.engine.read(f"SELECT {columns} FROM {name} ORDER BY ALL")

    def close(self) -> None:
        self.engine.close()


@pytest.fixture
async def log(tmp_path):
    log = await Log(tmp_path / "facts.duckdb").open()
    yield log
    log.close()


async def test_started_then_terminal_in_separate_applies(log):
    await log.apply(f.started(t=0, user_id="u1", tags=["a"]))
    assert await log.table("pending") == [("r1", 1, None, 0)]
    await log.apply(f.completed(t=1, tags=["b"]))
    assert await log.table("pending") == []
    assert await log.table("requests", "request_id, start_pos, end_pos, status, user_id, "
                                       "tags") == [("r1", 1, 2, 1, "u1", ["a", "b"])]
    assert await log.table("unstarted", "*") == []


async def test_terminal_then_started_in_separate_applies(log):
    await log.apply(f.failed(t=1))
    assert await log.table("requests") == [("r1", None, 1, 2)]
    assert await log.table("unstarted", "request_id, end_pos") == [("r1", 1)]
    await log.apply(f.started(t=0))
    assert await log.table("requests") == [("r1", 2, 1, 2)]
    assert await log.table("unstarted", "*") == [] and await log.table("pending") == []


async def test_a_second_started_event_keeps_the_first(log):
    await log.apply(f.started(t=0, model="first"))
    await log.apply(f.started(t=5, model="second"), f.started(request_id="r2"))
    assert await log.table("pending", "request_id, start_pos, model") == [
        ("r1", 1, "first"), ("r2", 3, "gpt-4")]
    await log.apply(f.completed(t=6))
    assert await log.table("requests") == [("r1", 1, 4, 1)]
    assert await log.table("pending", "request_id") == [("r2",)]


async def test_a_second_terminal_event_of_a_start_less_request_keeps_the_first(log):
    await log.apply(f.completed(t=1, prompt_tokens=7))
    await log.apply(f.failed(t=2), f.completed(request_id="r2"))
    assert await log.table("requests", "request_id, end_pos, status, prompt_tokens") == [
        ("r1", 1, 1, 7), ("r2", 3, 1, 10)]
    await log.apply(f.started(t=0))
    assert await log.table("requests", "request_id, start_pos, end_pos, prompt_tokens") == [
        ("r1", 4, 1, 7), ("r2", None, 3, 10)]
    assert await log.table("unstarted", "request_id") == [("r2",)]


async def test_both_events_in_one_apply_with_duplicates(log):
    await log.apply(f.completed(t=1), f.started(t=0), f.started(t=3), f.failed(t=4))
    assert await log.table("requests") == [("r1", 2, 1, 1)]
    assert await log.table("pending") == [] and await log.table("unstarted", "*") == []


async def test_what_is_pending_or_start_less_is_known_after_a_reopen(log):
    await log.apply(f.started(request_id="a"), f.completed(request_id="b"))
    await log.reopen()
    await log.apply(f.completed(request_id="a"), f.started(request_id="b"))
    assert await log.table("requests") == [("a", 1, 3, 1), ("b", 4, 2, 1)]
    assert await log.table("pending") == [] and await log.table("unstarted", "*") == []


async def test_what_is_pending_or_start_less_is_known_after_an_erasure(log):
    [a, b] = await log.apply(f.started(request_id="a"), f.started(request_id="b"))
    [c, d] = await log.apply(f.completed(request_id="c"), f.completed(request_id="d"))
    await log.erase([a, c])
    assert await log.table("pending", "request_id") == [("b",)]
    assert await log.table("unstarted", "request_id") == [("d",)]
    await log.apply(f.completed(request_id="b"), f.started(request_id="d"),
                    f.started(request_id="c"))
    assert await log.table("requests") == [("b", b, 6, 1), ("d", 7, d, 1)]
    assert await log.table("pending", "request_id") == [("c",)]
    assert await log.table("unstarted", "*") == []


async def test_many_requests_in_one_apply_pair_with_what_is_stored(log):
    await log.apply(*[f.started(request_id=str(i), t=i) for i in range(0, 300, 2)],
                    *[f.completed(request_id=str(i), t=i + 1) for i in range(1, 300, 2)])
    await log.apply(*[f.completed(request_id=str(i), t=i + 1) for i in range(0, 300, 2)],
                    *[f.started(request_id=str(i), t=i) for i in range(1, 300, 2)])
    rows = await log.table("requests", "count(*), count(start_pos), count(end_pos)")
    assert rows == [(300, 300, 300)]
    assert await log.table("pending") == [] and await log.table("unstarted", "*") == []
