"""The writer on a real SQLite log: groups committed while the read models apply earlier ones
reach them together, in commit order, and no request is answered before its events are
applied (an acknowledged event is durable and visible)."""

from __future__ import annotations

import asyncio

import msgspec

from events.schema import WireEvent
from events.store import Accepted
from service.ingest import prepare
from service.writer import MAX_UNANSWERED_GROUPS, Writer
from tests import factories as f

_decode = msgspec.json.Decoder(WireEvent)


def batch(request_id: str):
    return prepare([_decode.decode(msgspec.json.encode(f.started(request_id=request_id)))])


class GatedModels:
    """Read models that record each apply and hold it until `gate` is set."""

    def __init__(self):
        self.position = 0
        self.applies: list[list[int]] = []
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def apply_rows(self, rows):
        self.entered.set()
        await self.gate.wait()
        self.applies.append([p for p, _ in rows])
        self.position = rows[-1][0]


async def logged(store, count: int, timeout: float = 5.0) -> None:
    """Wait until the log holds `count` events."""
    async with asyncio.timeout(timeout):
        while await store.last_position() < count:
            await asyncio.sleep(0.001)


async def test_groups_committed_during_an_apply_are_applied_together_in_order(store):
    models = GatedModels()
    positions_seen = []
    writer = Writer(store, models, 1_000_000, on_commit=positions_seen.append)
    writer.start()
    try:
        first = asyncio.create_task(writer.submit(batch("r0")))
        await models.entered.wait()  # the first group is being applied, and held there
        later = []
        for i in range(1, MAX_UNANSWERED_GROUPS):
            later.append(asyncio.create_task(writer.submit(batch(f"r{i}"))))
            # One group each: the writer commits it before the next one is queued.
            await logged(store, i + 1)
        await asyncio.sleep(0.05)
        assert not first.done() and not any(t.done() for t in later)  # nothing visible yet
        assert models.applies == []
        models.gate.set()
        results = await asyncio.gather(first, *later)
    finally:
        models.gate.set()
        await writer.close()
    assert [r.last_position for r in results] == list(range(1, MAX_UNANSWERED_GROUPS + 1))
    assert all(isinstance(r, Accepted) and r.appended == 1 for r in results)
    # The first group alone (it was the only one), then every group committed meanwhile.
    assert models.applies == [[1], list(range(2, MAX_UNANSWERED_GROUPS + 1))]
    assert positions_seen == [1, MAX_UNANSWERED_GROUPS]
    assert writer.appended == MAX_UNANSWERED_GROUPS


async def test_the_writer_stops_committing_at_the_unanswered_limit(store):
    models = GatedModels()
    writer = Writer(store, models, 1_000_000)
    writer.start()
    try:
        tasks = [asyncio.create_task(writer.submit(batch("r0")))]
        await models.entered.wait()
        for i in range(1, MAX_UNANSWERED_GROUPS + 2):
            tasks.append(asyncio.create_task(writer.submit(batch(f"r{i}"))))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        # The limit counts the group being applied: the writer waits with the rest queued.
        assert await store.last_position() == MAX_UNANSWERED_GROUPS
        models.gate.set()
        results = await asyncio.gather(*tasks)
    finally:
        models.gate.set()
        await writer.close()
    assert sorted(r.last_position for r in results) == list(range(1, MAX_UNANSWERED_GROUPS + 3))
    assert models.position == MAX_UNANSWERED_GROUPS + 2
    applied = [p for apply in models.applies for p in apply]
    assert applied == list(range(1, MAX_UNANSWERED_GROUPS + 3))


async def test_an_apply_that_fails_still_answers_and_the_next_groups_apply(store):
    class Flaky(GatedModels):
        async def apply_rows(self, rows):
            if not self.applies and not self.entered.is_set():
                self.entered.set()
                raise RuntimeError("boom")
            await super().apply_rows(rows)

    models = Flaky()
    models.gate.set()
    writer = Writer(store, models, 1_000_000)
    writer.start()
    try:
        first = await writer.submit(batch("r0"))
        second = await writer.submit(batch("r1"))
    finally:
        await writer.close()
    assert first.last_position == 1 and second.last_position == 2
    assert models.applies == [[2]]
