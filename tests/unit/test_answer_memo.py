"""One-session answers, kept (`projections.memo`) and gathered (`projections.session_answers`),
equal the answers computed afresh, whatever the order of applies and reads, through real
DuckDB files."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections import session_answers
from projections.memo import AnswerMemo
from projections.prices import PriceTable
from projections.query import Question, Scope
from tests import factories as f
from tests.unit.test_metrics import Folded

STALE_AFTER_US = 30_000_000  # 30 s of event time: other sessions' events turn requests stale
SESSIONS = ["s1", "s2", "s3"]


def fresh(models: Folded, sid: str) -> bytes | None:
    """The oracle: the answer computed now, past the memo (`now_us` makes it a non-plain
    question, judged against the newest event time as the plain one is)."""
    return asyncio.run(session_answers.answer(
        models.facts, sid, Scope(stale_after_us=STALE_AFTER_US, now_us=2**62)))


def kept(models: Folded, sid: str) -> bytes | None:
    return asyncio.run(session_answers.answer(models.facts, sid,
                                            Scope(stale_after_us=STALE_AFTER_US)))


def event(kind: str, sid: str, rid: int, t: float) -> dict:
    if kind == "started":
        return f.started(sid, f"r{rid}", t=t)
    if kind == "completed":
        return f.completed(sid, f"r{rid}", t=t, prompt_tokens=rid, completion_tokens=1)
    return f.failed(sid, f"r{rid}", t=t)


def applies(sessions: list[str], requests: int = 6):
    """Steps that apply one event: (kind, session, request number, time), as `event` takes."""
    return st.tuples(st.sampled_from(["started", "completed", "failed"]),
                     st.sampled_from(sessions), st.integers(0, requests - 1),
                     st.integers(0, 200))


steps = st.lists(st.one_of(st.tuples(st.just("read"), st.sampled_from(SESSIONS)),
                           applies(SESSIONS)), min_size=1, max_size=16)


@settings(max_examples=12, deadline=None)
@given(steps)
def test_kept_answers_equal_fresh_ones_after_any_interleaving(plan):
    """Reads between applies, including requests that turn stale only because another
    session's event moved the newest event time on. A failure prints the plan; rerun it with
    `@example(plan)`."""
    models = Folded(None)
    for step in plan:
        if step[0] == "read":
            assert kept(models, step[1]) == fresh(models, step[1]), plan
        else:
            kind, sid, rid, t = step
            models.add([event(kind, sid, rid, t)])
    for sid in SESSIONS:
        assert kept(models, sid) == fresh(models, sid), plan
        assert kept(models, sid) == fresh(models, sid), plan  # the second one from the memo


def test_a_kept_answer_with_pending_requests_follows_the_staleness_cutoff():
    """A request of s1 turns stale when s2's event moves the newest event time past it,
    though s1 itself did not change."""
    models = Folded(None)
    models.add([f.started("s1", "r1", t=0)])
    assert msgspec.json.decode(kept(models, "s1"))["in_flight_requests"] == 1
    models.add([f.completed("s2", "r1", t=100)])
    assert msgspec.json.decode(kept(models, "s1"))["stale_requests"] == 1
    assert kept(models, "s1") == fresh(models, "s1")


def test_a_read_under_way_while_its_session_changes_is_not_kept():
    models = Folded(None)
    models.add([f.completed("s1", "r1")])

    async def race():
        reading = asyncio.create_task(session_answers.answer(
            models.facts, "s1", Scope(stale_after_us=STALE_AFTER_US)))
        await asyncio.sleep(0)  # the read has its ticket and is asking the engine
        models.position += 1
        await models.facts.apply_rows([(models.position, _record(f.failed("s1", "r2")))])
        await reading

    asyncio.run(race())
    assert models.facts.answers.get(("s1", STALE_AFTER_US, 100)) is None
    assert msgspec.json.decode(kept(models, "s1"))["total_requests"] == 2
    assert kept(models, "s1") == fresh(models, "s1")


def _record(wire: dict):
    from events.schema import WireEvent
    from service.ingest import prepare
    return prepare([msgspec.json.decode(msgspec.json.encode(wire), type=WireEvent)])[0].record


def test_new_prices_reach_kept_answers():
    models = Folded(None)
    models.add([f.completed("s1", model="gpt-4", prompt_tokens=1000, completion_tokens=0)])
    before = msgspec.json.decode(kept(models, "s1"))["total_cost_usd"]
    asyncio.run(models.facts.set_prices(
        PriceTable.from_json(b'{"models": {"gpt-4": {"input": 1000, "output": 0}}}')))
    assert msgspec.json.decode(kept(models, "s1"))["total_cost_usd"] == pytest.approx(1.0)
    assert before != pytest.approx(1.0)


def test_sliced_questions_are_never_kept():
    models = Folded(None)
    models.add([f.completed("s1", "r1", model="a"), f.completed("s1", "r2", model="b")])
    sliced = Scope(question=Question(where={"model": ("a",)}), stale_after_us=STALE_AFTER_US)
    answer = asyncio.run(session_answers.answer(models.facts, "s1", sliced))
    assert msgspec.json.decode(answer)["total_requests"] == 1
    assert models.facts.answers.get(("s1", STALE_AFTER_US, 100)) is None
    assert msgspec.json.decode(kept(models, "s1"))["total_requests"] == 2


def test_the_memo_keeps_at_most_its_bytes_and_drops_the_least_recently_read():
    memo = AnswerMemo(max_bytes=10)
    for name in "abc":
        memo.keep(memo.ticket(name, name), b"1234")
        memo.get("a")  # read a again: b goes first
    assert memo.get("a") is not None and memo.get("c") is not None and memo.get("b") is None
    memo.forget(["a"])
    assert memo.get("a") is None and memo.get("c") is not None
    memo.keep(memo.ticket("big", "big"), b"x" * 11)
    assert memo.get("big") is None
    memo.forget_all()
    assert memo.get("c") is None


def test_concurrent_cold_reads_are_gathered_into_few_questions_and_answer_each_right():
    models = Folded(None)
    sessions = [f"g{i}" for i in range(60)]
    models.add([f.completed(sid, "r1", prompt_tokens=i + 1) for i, sid in enumerate(sessions)])
    expected = {sid: fresh(models, sid) for sid in sessions + ["missing"]}
    asked = []
    read = models.facts.engine.read

    async def counting_read(sql, params=(), **options):
        asked.append(sql)
        return await read(sql, params, **options)

    models.facts.engine.read = counting_read

    async def all_at_once():
        return await asyncio.gather(*(session_answers.answer(
            models.facts, sid, Scope(stale_after_us=STALE_AFTER_US))
            for sid in sessions + ["missing"]))

    got = asyncio.run(all_at_once())
    assert dict(zip(sessions + ["missing"], got)) == expected
    assert expected["missing"] is None
    # Each overview is two engine questions; 61 asked one by one would be 122.
    assert len(asked) <= 2 * (session_answers.SLOTS + 1), len(asked)
