"""The session answers kept on disk (`projections.answer_store`, written by
`session_answers.keep`) equal the answers the engine computes afresh, whatever the order of
applies, rounds of the keeper, restarts and crashes, through real DuckDB and SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections import session_answers
from projections.prices import PriceTable
from projections.query import Scope
from tests import factories as f
from tests.unit.test_answer_memo import STALE_AFTER_US, applies, event, fresh
from tests.unit.test_metrics import Folded

SESSIONS = ["s1", "s2", "s3", "s4"]
TOP_MODELS = 100


class Kept:
    """Facts (`Folded`) with an answer store beside them, as the service keeps one."""

    def __init__(self):
        self.models = Folded(None)
        self._dir = tempfile.TemporaryDirectory()
        self.path = Path(self._dir.name) / "answers.db"
        self.store = self.open()

    def open(self, top_models: int = TOP_MODELS):
        return asyncio.run(session_answers.open_store(self.models.facts, self.path,
                                                      STALE_AFTER_US, top_models))

    def settle(self) -> None:
        """Run the keeper until every session's answer is written."""
        async def run():
            keeper = asyncio.create_task(session_answers.keep(self.models.facts, self.store))
            while not self.store.complete or self.store.dirty:
                await asyncio.sleep(0.01)
            keeper.cancel()
        asyncio.run(run())

    def close(self) -> None:
        asyncio.run(self.store.close())
        self.models.facts.answer_store = None

    def restart(self, crash: bool = False) -> None:
        """Close the store (or drop it, as a crash would, with nothing more written) and open
        the file again."""
        if crash:
            self.store._thread.shutdown()
        else:
            asyncio.run(self.store.close())
        self.models.facts.answer_store = None
        self.store = self.open()

    def served(self, sid: str) -> bytes | None:
        return asyncio.run(session_answers.answer(self.models.facts, sid,
                                                  Scope(stale_after_us=STALE_AFTER_US)))

    def check(self, plan=None) -> None:
        """Every row equals the engine's answer; a settled session is read from its row."""
        self.models.facts.answers.forget_all()  # the memo would answer otherwise
        for sid in SESSIONS + ["missing"]:
            expected = fresh(self.models, sid)
            assert self.store.serves(sid), (sid, plan)
            found, body = self.store.lookup(sid)
            assert found == (expected is not None), (sid, plan)
            if body is not None:
                assert body == expected, (sid, plan)
            assert self.served(sid) == expected, (sid, plan)


steps = st.lists(st.one_of(st.tuples(st.sampled_from(["settle", "restart", "crash", "read"])),
                           applies(SESSIONS, requests=5)), min_size=1, max_size=14)


@settings(max_examples=15, deadline=None)
@given(steps)
def test_kept_answers_equal_fresh_ones_after_any_interleaving(plan):
    """A failure prints the plan; rerun it with `@example(plan)`."""
    kept = Kept()
    for step in plan:
        if step[0] == "settle":
            kept.settle()
        elif step[0] in ("restart", "crash"):
            kept.restart(crash=step[0] == "crash")
        elif step[0] == "read":
            for sid in SESSIONS:
                assert kept.served(sid) == fresh(kept.models, sid), plan
        else:
            kind, sid, rid, t = step
            kept.models.add([event(kind, sid, rid, t)])
    kept.settle()
    kept.check(plan)
    kept.restart()
    assert kept.store.complete and not kept.store.dirty, plan  # nothing to build again
    kept.check(plan)


def test_a_crash_between_an_apply_and_its_round_loses_nothing():
    kept = Kept()
    kept.models.add([f.completed("s1", "r1", prompt_tokens=5), f.completed("s2", "r1")])
    kept.settle()
    watermark = kept.store.watermark
    kept.models.add([f.completed("s1", "r2", prompt_tokens=7)])
    kept.restart(crash=True)  # the apply is in the facts; its session's row is the old one
    assert kept.store.complete and kept.store.watermark == watermark
    assert not kept.store.serves("s1") and kept.store.serves("s2")
    assert msgspec.json.decode(kept.served("s1"))["total_requests"] == 2
    kept.settle()
    kept.check()


def test_another_policy_or_prices_start_the_answers_over():
    kept = Kept()
    kept.models.add([f.completed("s1", "r1", model="gpt-4", prompt_tokens=1000,
                                 completion_tokens=0)])
    kept.settle()
    kept.close()
    kept.store = kept.open(top_models=5)
    assert not kept.store.complete  # answers of another policy are not served
    kept.settle()
    asyncio.run(kept.models.facts.set_prices(
        PriceTable.from_json(b'{"models": {"gpt-4": {"input": 1000, "output": 0}}}')))
    assert not kept.store.complete
    kept.settle()
    assert msgspec.json.decode(kept.store.lookup("s1")[1])["total_cost_usd"] == 1.0


def test_an_erasure_leaves_no_byte_of_the_erased_session_in_the_file():
    kept = Kept()
    kept.models.add([f.completed("erased-session-xyz", "r1", user_id="erased-user-xyz"),
                     f.completed("s2", "r1")])
    kept.settle()
    assert b"erased-session-xyz" in b"".join(p.read_bytes() for p in kept.path.parent.iterdir())
    from events.records import Erased
    kept.models.position += 1
    asyncio.run(kept.models.facts.apply_rows(
        [(kept.models.position, Erased((1,), "session", "", 1, 0))]))
    kept.settle()
    for path in kept.path.parent.iterdir():
        assert b"erased-session-xyz" not in path.read_bytes(), path
    assert kept.store.lookup("erased-session-xyz") == (False, None)
    kept.check()


def test_rebuilt_facts_are_not_taken_for_the_ones_the_answers_came_from():
    kept = Kept()
    kept.models.add([f.completed("s1", "r1")])
    kept.settle()
    kept.close()
    asyncio.run(kept.models.facts.reset())  # a rebuild from the log begins: a new generation
    kept.models.position = 0
    kept.models.add([f.completed("s1", "r1"), f.completed("s1", "r2")])
    kept.store = kept.open()
    assert not kept.store.complete
    kept.settle()
    assert msgspec.json.decode(kept.store.lookup("s1")[1])["total_requests"] == 2


def test_a_damaged_file_is_made_anew():
    kept = Kept()
    kept.models.add([f.completed("s1", "r1")])
    kept.settle()
    kept.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{kept.path}{suffix}").unlink(missing_ok=True)
    kept.path.write_bytes(b"not a database" * 100)
    kept.store = kept.open()
    assert not kept.store.complete
    kept.settle()
    kept.check()
    assert sqlite3.connect(kept.path).execute("SELECT complete FROM meta").fetchone() == (1,)


def _with_a_keeper_round_before_each_write(kept: Kept):
    """Make the facts' next writes wait for a whole round of the keeper first, as it may run
    while a change of every fact is under way (between the store's forget and the change)."""
    facts = kept.models.facts
    write = facts.engine.write

    async def write_after_a_round(fn):
        keeper = asyncio.create_task(session_answers.keep(facts, kept.store))
        while not kept.store.complete:
            await asyncio.sleep(0.01)
        keeper.cancel()
        return await write(fn)
    facts.engine.write = write_after_a_round
    return write


@pytest.mark.parametrize("change", ["erasure", "prices"])
def test_a_keeper_round_during_a_change_of_every_fact_does_not_outlive_it(change):
    kept = Kept()
    kept.models.add([f.completed("s1", "r1", model="gpt-4", prompt_tokens=1000,
                                 completion_tokens=0),
                     f.completed("s1", "r2", model="gpt-4", prompt_tokens=1000,
                                 completion_tokens=0),
                     f.completed("s2", "r1")])
    kept.settle()
    facts = kept.models.facts
    write = _with_a_keeper_round_before_each_write(kept)
    try:
        if change == "erasure":
            from events.records import Erased
            kept.models.position += 1
            asyncio.run(facts.apply_rows([(kept.models.position,
                                           Erased((1,), "session", "", 1, 0))]))
        else:
            asyncio.run(facts.set_prices(PriceTable.from_json(
                b'{"models": {"gpt-4": {"input": 1000, "output": 0}}}')))
    finally:
        facts.engine.write = write
    kept.settle()
    kept.check(change)
    s1 = msgspec.json.decode(kept.store.lookup("s1")[1])
    assert s1["total_requests"] == (1 if change == "erasure" else 2)


def test_the_keeper_yields_to_applies():
    """A round during which applies came in is followed by smaller rounds and a rest of
    `YIELD` times the round; a quiet round by the plain pause and full rounds."""
    kept = Kept()

    async def rounds():
        pace = session_answers._Pace(kept.store)
        pace.begin()
        await asyncio.sleep(0.03)  # the round's work
        kept.store.touch(["s1"])
        rest_started = time.monotonic()
        await pace.rest()
        busy_rest = time.monotonic() - rest_started
        assert pace.busy and pace.chunk == session_answers.BUSY_CHUNK
        assert busy_rest >= 0.03 * session_answers.YIELD
        pace.begin()
        await pace.rest()
        assert not pace.busy and pace.chunk == session_answers.CHUNK
    asyncio.run(rounds())


def test_a_session_read_from_the_file_is_read_from_memory_next_time():
    kept = Kept()
    kept.models.add([f.completed("s1", "r1")])
    kept.settle()
    kept.models.facts.answers.forget_all()
    body = kept.served("s1")
    assert kept.models.facts.answers.get(("s1", STALE_AFTER_US, TOP_MODELS))[1] == body
    kept.models.add([f.completed("s1", "r2")])  # and forgotten there when the session changes
    assert kept.models.facts.answers.get(("s1", STALE_AFTER_US, TOP_MODELS)) is None
    assert msgspec.json.decode(kept.served("s1"))["total_requests"] == 2
