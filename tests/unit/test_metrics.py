"""The metrics rules, one at a time, through the real ingest -> record -> facts -> query path
(a real DuckDB file per case)."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path

import msgspec
import pytest

from events.schema import WireEvent
from projections import query
from projections.engine import Engine
from projections.facts import Facts
from projections.prices import PriceTable, default_prices
from projections.query import Question, Scope
from service.ingest import prepare
from tests import factories as f

_decode = msgspec.json.Decoder(WireEvent)
NOW_US = 2**62  # staleness judged against the newest event time, not the test's clock


class Folded:
    """Request facts of some events, in a DuckDB file of its own."""

    def __init__(self, prices: PriceTable | None):
        self._dir = tempfile.TemporaryDirectory()
        self.engine = Engine.open(Path(self._dir.name) / "facts.duckdb")
        self.facts = asyncio.run(Facts.open(self.engine, prices or default_prices()))
        self.position = 0

    def add(self, events: list[dict]) -> None:
        wire = [_decode.decode(msgspec.json.encode(e)) for e in events]
        rows = []
        for event in prepare(wire):
            self.position += 1
            rows.append((self.position, event.record))
        asyncio.run(self.facts.apply_rows(rows))

    def __del__(self):
        self.engine.close()
        self._dir.cleanup()


def fold(events: list[dict], prices: PriceTable | None = None) -> Folded:
    folded = Folded(prices)
    folded.add(events)
    return folded


def _scope(stale_after_s: float = 10**9, **where) -> Scope:
    return Scope(question=Question(where={k: (v,) for k, v in where.items()}),
                 stale_after_us=int(stale_after_s * 1e6), now_us=NOW_US)


def session(models: Folded, sid: str = "s1", stale_after_s: float = 10**9) -> dict:
    answers = asyncio.run(query.overview(models.facts, _scope(stale_after_s), "session_id",
                                         [sid]))
    return msgspec.to_builtins(query.session_metrics(sid, answers[sid]))


def totals(models: Folded, stale_after_s: float = 10**9, **where) -> dict:
    answers = asyncio.run(query.overview(models.facts, _scope(stale_after_s, **where)))
    return msgspec.to_builtins(query.global_metrics(answers[None]))


def test_the_quickstart_example_reproduces_exactly():
    got = session(fold(f.seed_session("abc-123")), "abc-123")
    assert {k: got[k] for k in (
        "session_id", "total_requests", "successful_requests", "failed_requests",
        "total_duration_ms", "average_duration_ms", "total_prompt_tokens",
        "total_completion_tokens", "total_tokens", "average_tokens_per_request",
        "requests_with_tools")} == {
        "session_id": "abc-123", "total_requests": 15, "successful_requests": 14,
        "failed_requests": 1, "total_duration_ms": 45000, "average_duration_ms": 3214.29,
        "total_prompt_tokens": 12500, "total_completion_tokens": 8300, "total_tokens": 20800,
        "average_tokens_per_request": 1485.71, "requests_with_tools": 8}
    assert got["in_flight_requests"] == 0
    assert got["error_rate"] == pytest.approx(1 / 15, abs=1e-6)
    assert got["errors_by_type"] == {"RateLimitError": 1}


def test_a_request_known_only_from_its_terminal_event_counts():
    got = session(fold([f.completed(), f.failed(request_id="r2")]))
    assert (got["total_requests"], got["in_flight_requests"]) == (2, 0)


def test_in_flight_until_finished_in_either_order():
    assert session(fold([f.started()]))["in_flight_requests"] == 1
    assert session(fold([f.started(), f.completed()]))["in_flight_requests"] == 0
    assert session(fold([f.completed(), f.started()]))["in_flight_requests"] == 0
    assert totals(fold([f.completed(), f.started(), f.started(request_id="x")]))[
        "in_flight_requests"] == 1


def test_averages_are_over_successful_requests_and_null_without_any():
    got = session(fold([f.failed()]))
    assert got["average_duration_ms"] is None and got["average_tokens_per_request"] is None
    assert got["duration_ms_percentiles"] is None and got["output_tokens_per_second"] is None


def test_total_tokens_defaults_and_explicit_values_are_summed():
    got = session(fold([f.completed(prompt_tokens=3, completion_tokens=4),
                        f.completed(request_id="r2", total_tokens=100)]))
    assert got["total_tokens"] == 7 + 100


def test_stale_requests_are_not_in_flight():
    models = fold([f.started(t=0), f.started(request_id="r2", t=590), f.completed(
        request_id="r3", t=700)])
    got = session(models, stale_after_s=600)
    assert (got["in_flight_requests"], got["stale_requests"]) == (1, 1)
    assert (totals(models, 600)["in_flight_requests"],
            totals(models, 600)["stale_requests"]) == (1, 1)


def test_one_event_stamped_in_the_future_does_not_turn_pending_requests_stale():
    """Issue 12 (10): staleness is judged against the newest event time, but never past the
    clock, so a client with a skewed clock cannot make everyone's requests stale."""
    import time
    now_s = time.time()
    models = fold([
        dict(f.started(), timestamp=_iso(now_s - 5)),
        dict(f.started(request_id="skewed", session_id="s9"),
             timestamp=_iso(now_s + 23 * 3600))])
    answers = asyncio.run(query.overview(models.facts, Scope(stale_after_us=600_000_000)))
    assert (answers[None]["in_flight_requests"], answers[None]["stale_requests"]) == (2, 0)


def _iso(epoch_s: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat()


PRICES = PriceTable.from_json(msgspec.json.encode({"models": {
    "gpt-4": {"input": 30, "output": 60},
    "gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25,
               "patterns": ["gpt-4o-20*"]},
    "gpt-4o-mini": {"input": 0.15, "output": 0.6, "patterns": ["gpt-4o-mini-*"]},
}}))


def test_cost_from_the_seed_gpt4_prices():
    got = session(fold([f.completed(model="gpt-4", prompt_tokens=1000, completion_tokens=1000)],
                       PRICES))
    assert got["prompt_cost_usd"] == pytest.approx(0.03)
    assert got["completion_cost_usd"] == pytest.approx(0.06)
    assert got["total_cost_usd"] == pytest.approx(0.09)


def test_cached_prompt_tokens_are_charged_the_cached_price():
    got = session(fold([f.completed(model="gpt-4o", prompt_tokens=1_000_000,
                                    cached_prompt_tokens=400_000, completion_tokens=0)], PRICES))
    assert got["prompt_cost_usd"] == pytest.approx(600_000 * 2.5e-6 + 400_000 * 1.25e-6)


@pytest.mark.parametrize("model,price", [("gpt-4o-2024-08-06", 2.5), ("gpt-4o-mini-2024-07-18",
                                                                        0.15)])
def test_dated_variants_match_the_most_specific_pattern(model, price):
    got = session(fold([f.completed(model=model, prompt_tokens=1_000_000, completion_tokens=0)],
                       PRICES))
    assert got["total_cost_usd"] == pytest.approx(price)
    assert got["unpriced_models"] == []


def test_unknown_models_cost_nothing_and_are_listed():
    got = totals(fold([f.completed(model="my-llama"), f.completed(request_id="2")], PRICES))
    assert got["by_model"]["my-llama"]["total_cost_usd"] == 0
    assert got["unpriced_models"] == ["my-llama"]


def test_a_cost_given_by_the_caller_wins_and_is_split_like_the_table():
    got = session(fold([f.completed(model="gpt-4", prompt_tokens=1000, completion_tokens=1000,
                                    cost_usd=0.9)], PRICES))
    assert got["total_cost_usd"] == pytest.approx(0.9)
    assert got["prompt_cost_usd"] == pytest.approx(0.3)
    unknown = session(fold([f.completed(model="x", prompt_tokens=1, completion_tokens=3,
                                        cost_usd=0.4)], PRICES))
    assert unknown["prompt_cost_usd"] == pytest.approx(0.1)
    assert unknown["unpriced_models"] == []


def test_repricing_needs_only_a_new_table():
    events = [f.completed(model="gpt-4", prompt_tokens=1000, completion_tokens=0)]
    cheaper = PriceTable.from_json(b'{"models": {"gpt-4": {"input": 3, "output": 6}}}')
    assert session(fold(events, PRICES))["total_cost_usd"] == pytest.approx(0.03)
    assert session(fold(events, cheaper))["total_cost_usd"] == pytest.approx(0.003)


def test_by_model_and_filters():
    models = fold([
        f.completed(model="a", prompt_tokens=1, completion_tokens=0, user_id="u1", tags=["x"]),
        f.completed(request_id="2", model="b", prompt_tokens=10, completion_tokens=0,
                    user_id="u2", tags=["x", "y"]),
        f.failed(session_id="s2", request_id="3", model="a", user_id="u1"),
    ])
    got = totals(models)
    assert set(got["by_model"]) == {"a", "b"}
    assert got["by_model"]["a"]["failed_requests"] == 1
    assert totals(models, model="a")["total_tokens"] == 1
    assert totals(models, model="a")["total_sessions"] == 2
    assert totals(models, user_id="u1")["total_requests"] == 2
    assert totals(models, tag="x")["total_tokens"] == 11
    assert totals(models, tag="y")["total_sessions"] == 1


def test_output_tokens_per_second_excludes_time_to_first_token():
    got = session(fold([f.completed(duration_ms=3000, time_to_first_token_ms=1000,
                                    completion_tokens=100)]))
    assert got["output_tokens_per_second"] == 50.0
    assert got["time_to_first_token_ms_percentiles"]["p50"] == pytest.approx(1000, rel=0.01)


def test_a_session_read_twice_sees_requests_added_in_between():
    models = fold([f.completed(request_id="1")])
    assert session(models)["total_requests"] == 1
    models.add([f.failed(request_id="2")])
    assert session(models)["total_requests"] == 2 and session(models)["failed_requests"] == 1


async def test_facts_that_cannot_take_a_page_name_the_position(store, tmp_path, monkeypatch):
    from projections import facts as facts_module
    from projections.replay import UnfoldableLog, catch_up
    wire = [_decode.decode(msgspec.json.encode(e)) for e in [f.started(), f.completed()]]
    await store.append([prepare(wire)])
    engine = Engine.open(tmp_path / "facts.duckdb")
    try:
        facts = await Facts.open(engine, default_prices())

        def broken(items):
            raise ZeroDivisionError("boom")

        monkeypatch.setattr(facts_module, "_terminal_columns", broken)
        with pytest.raises(UnfoldableLog, match="after position 0 decode but cannot be applied"):
            await catch_up(store, facts)
        assert facts.position == 0
    finally:
        engine.close()


def test_a_long_session_answers_like_its_requests_one_by_one():
    """Many requests in one session, read between batches: every read equals the facts of
    the events so far (no per-session state to go stale)."""
    events = []
    for i in range(200):
        events.append(f.completed(request_id=str(i), duration_ms=100 + i, prompt_tokens=i,
                                  model="a" if i % 3 else "b", t=i))
        if i % 7 == 0:
            events.append(f.failed(request_id=f"x{i}", model="b", t=i, error_type=f"E{i % 2}"))
    whole = fold(events)
    step = fold(events[:40])
    before = session(step)
    for start in range(40, len(events), 37):
        step.add(events[start:start + 37])
        session(step)
    assert session(step) == session(whole) != before
    got = session(whole)
    assert got["total_requests"] == len(events)
    assert got["total_prompt_tokens"] == sum(e.get("prompt_tokens", 0) for e in events
                                             if e["type"] == "LLM_REQUEST_COMPLETED")
    assert set(got["by_model"]) == {"a", "b"}
    assert got["errors_by_type"] == {"E0": 15, "E1": 14}


def test_a_big_overview_assembled_off_the_loop_equals_one_assembled_on_it(monkeypatch):
    models = fold([f.completed(f"s{i}", f"r{j}", model=f"m{j}", prompt_tokens=i + j)
                   for i in range(150) for j in range(3)])
    ask = lambda: asyncio.run(query.overview(models.facts, _scope(), "session_id",  # noqa: E731
                                             [f"s{i}" for i in range(150)]))
    threads = []
    monkeypatch.setattr(query, "_overview_answers",
                        lambda *a, _f=query._overview_answers: threads.append(
                            threading.current_thread()) or _f(*a))
    off_loop = ask()
    monkeypatch.setattr(query, "OFF_LOOP_ROWS", 10**9)
    on_loop = ask()
    assert threads[0] is not threading.main_thread() and threads[1] is threading.main_thread()
    assert len(off_loop) == 150 and off_loop == on_loop
