"""Random request streams, shuffled and partly re-posted, through the real ingest, SQLite store,
DuckDB facts and query layer, compared with an oracle written here from the raw requests:
every group-by and measure, windows, as-of positions, exact percentiles, cost; facts rebuilt by
replay equal facts built live; persisted facts plus the tail equal a full rebuild.

A failure prints the requests and the question (hypothesis' falsifying example): paste them into
`test_one_example` below to rerun it alone.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import tempfile
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.schema import WireEvent
from events.sqlite_store import SQLiteStore
from events.store import Accepted
from projections import query
from projections.engine import Engine
from projections.facts import FACT_FIELDS, Facts
from projections.prices import PriceTable
from projections.query import Question, Scope
from projections.replay import catch_up
from service.ingest import prepare

# Flat prices, a pattern, dated periods, a long-context tier and cache prices: every pricing
# rule shows up in random streams.
PRICE_JSON = {"models": {
    "gpt-4": {"input": 30, "output": 60},
    "gpt-4o": {"patterns": ["gpt-4o-*"], "prices": [
        {"from": "2026-01-01", "input": 2.5, "output": 10, "cached_input": 1.25,
         "cache_write": 3.125,
         "above": {"prompt_tokens": 3000, "input": 5, "output": 20, "cached_input": 2.5,
                   "cache_write": 6.25}},
        {"from": "2026-03-01T01:00:00Z", "input": 2, "output": 8}]},
}}
PRICES = PriceTable.from_json(json.dumps(PRICE_JSON).encode())
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
T0_US = (T0 - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
STALE_S = 600
_decode = msgspec.json.Decoder(WireEvent)
MODELS = ["gpt-4", "gpt-4o", "gpt-4o-mini", "mystery"]


@st.composite
def requests(draw):
    n = draw(st.integers(1, 20))
    out = []
    for i in range(n):
        prompt = draw(st.integers(0, 5000))
        completion = draw(st.integers(0, 5000))
        cached = draw(st.integers(0, prompt))
        out.append(dict(
            session=draw(st.sampled_from(["s1", "s2", "team/a b", "ü🚀"])),
            rid=f"r{i}",
            model=draw(st.sampled_from(MODELS)),
            start_model=draw(st.sampled_from(MODELS)),
            provider=draw(st.sampled_from([None, "openai", "anthropic"])),
            user_t=draw(st.sampled_from([None, "u1", "u2"])),
            user_s=draw(st.sampled_from([None, "u1", "u3"])),
            tags_t=draw(st.lists(st.sampled_from(["x", "y"]), max_size=2, unique=True)),
            tags_s=draw(st.lists(st.sampled_from(["x", "z"]), max_size=2, unique=True)),
            start=draw(st.booleans()),
            outcome=draw(st.sampled_from(["completed", "completed", "failed", None])),
            t=draw(st.integers(0, 7200)),
            took=draw(st.integers(0, 900)),
            duration=draw(st.integers(0, 120_000)) / draw(st.sampled_from([1, 4, 1000])),
            ttft=draw(st.sampled_from([None, 0.0, 0.5])),
            prompt=prompt,
            completion=completion,
            cached=cached,
            cache_write=draw(st.integers(0, prompt - cached)),
            reasoning=draw(st.integers(0, completion)),
            tools=draw(st.booleans()),
            error=draw(st.sampled_from(["Timeout", "RateLimit"])),
            finish=draw(st.sampled_from([None, "stop", "length"])),
            cost=draw(st.sampled_from([None, None, 0.25])),
        ))
    return [r for r in out if r["start"] or r["outcome"]] or [dict(out[0], start=True)]


@st.composite
def questions(draw):
    dims = draw(st.lists(st.sampled_from(query.DIMENSIONS + ("time",)), max_size=2, unique=True))
    where = draw(st.dictionaries(
        st.sampled_from(["model", "user_id", "tag", "session_id", "provider"]),
        st.lists(st.sampled_from(["gpt-4", "gpt-4o", "u1", "u3", "x", "z", "s1", "openai"]),
                 min_size=1, max_size=2, unique=True).map(tuple), max_size=2))
    window = draw(st.sampled_from([None, (0, 3600), (1800, 9000)]))
    return dict(
        group_by=tuple(dims),
        measures=tuple(draw(st.lists(st.sampled_from(query.MEASURES), min_size=1, max_size=6,
                                     unique=True))),
        where=where,
        window=window,
        bucket=draw(st.sampled_from(list(query.BUCKETS))) if "time" in dims else None,
        as_of=draw(st.sampled_from([None, 0.3, 0.7])),
    )


def iso(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def events_of(r: dict) -> list[dict]:
    common = dict(session_id=r["session"], request_id=r["rid"], provider=r["provider"])
    out = []
    if r["start"]:
        out.append(dict(common, type="LLM_REQUEST_STARTED", timestamp=iso(r["t"]),
                        model=r["start_model"], user_id=r["user_s"], tags=r["tags_s"],
                        event_id=f"{r['session']}|{r['rid']}|s"))
    end = dict(common, timestamp=iso(r["t"] + r["took"]), model=r["model"], user_id=r["user_t"],
               tags=r["tags_t"], event_id=f"{r['session']}|{r['rid']}|t")
    if r["outcome"] == "completed":
        out.append(dict(end, type="LLM_REQUEST_COMPLETED", duration_ms=r["duration"],
                        prompt_tokens=r["prompt"], completion_tokens=r["completion"],
                        cached_prompt_tokens=r["cached"], reasoning_tokens=r["reasoning"],
                        cache_write_prompt_tokens=r["cache_write"], finish_reason=r["finish"],
                        has_tool_calls=r["tools"], cost_usd=r["cost"],
                        time_to_first_token_ms=None if r["ttft"] is None
                        else r["ttft"] * r["duration"]))
    elif r["outcome"] == "failed":
        out.append(dict(end, type="LLM_REQUEST_FAILED", error_type=r["error"]))
    return out


# ---- the oracle: straight from the requests, no code shared with the read side --------------

def us(ms: float) -> int:
    return int(ms * 1000 + 0.5)


def nearest_rank(values: list, q: float):
    return sorted(values)[max(math.ceil(q * len(values)) - 1, 0)] if values else None


def pico(usd_per_million) -> int:
    return int(Decimal(str(usd_per_million)) * 10**6)


def table_cost(r: dict) -> tuple[int, int] | None:
    """(prompt, completion) pico-dollars by the table, from PRICE_JSON directly."""
    entry = PRICE_JSON["models"].get(r["model"])
    if entry is None and r["model"].startswith("gpt-4o-"):
        entry = PRICE_JSON["models"]["gpt-4o"]
    if entry is None:
        return None
    periods = entry.get("prices", [entry])
    end_s = r["t"] + r["took"]
    chosen = periods[0]
    for p in periods[1:]:
        at = datetime.fromisoformat(p["from"].replace("Z", "+00:00"))
        if at.tzinfo is None:
            at = at.replace(tzinfo=timezone.utc)
        if T0 + timedelta(seconds=end_s) >= at:
            chosen = p
    if "above" in chosen and r["prompt"] > chosen["above"]["prompt_tokens"]:
        chosen = chosen["above"]
    price_in = chosen["input"]
    cached_in = chosen.get("cached_input", price_in)
    write_in = chosen.get("cache_write", price_in)
    fresh = r["prompt"] - r["cached"] - r["cache_write"]
    prompt = fresh * pico(price_in) + r["cached"] * pico(cached_in) \
        + r["cache_write"] * pico(write_in)
    return prompt, r["completion"] * pico(chosen["output"])


def cost_p(r: dict) -> int:
    if r["outcome"] != "completed":
        return 0
    if r["cost"] is not None:
        return round(Decimal(str(r["cost"])) * 10**12)
    return sum(table_cost(r) or (0, 0))


def measure(name: str, reqs: list[dict]):
    done = [r for r in reqs if r["outcome"] == "completed"]
    failed = [r for r in reqs if r["outcome"] == "failed"]
    n, ok = len(reqs), len(done)
    durations = [us(r["duration"]) for r in done]
    ttfts = [us(r["ttft"] * r["duration"]) for r in done if r["ttft"] is not None]
    gen = [(r["completion"], us(r["duration"]) - (0 if r["ttft"] is None
                                                  else us(r["ttft"] * r["duration"])))
           for r in done]
    gen = [(c, g) for c, g in gen if g > 0]
    if name.startswith("duration_ms_p"):
        v = nearest_rank(durations, int(name.rsplit("p", 1)[1]) / 100)
        return None if v is None else v / 1000
    if name.startswith("time_to_first_token_ms_p"):
        v = nearest_rank(ttfts, int(name.rsplit("p", 1)[1]) / 100)
        return None if v is None else v / 1000
    return {
        "total_requests": n,
        "successful_requests": ok,
        "failed_requests": len(failed),
        "error_rate": sql_round(len(failed) / n, 6) if n else None,
        "total_prompt_tokens": sum(r["prompt"] for r in done),
        "total_completion_tokens": sum(r["completion"] for r in done),
        "total_tokens": sum(r["prompt"] + r["completion"] for r in done),
        "cached_prompt_tokens": sum(r["cached"] for r in done),
        "cache_write_prompt_tokens": sum(r["cache_write"] for r in done),
        "reasoning_tokens": sum(r["reasoning"] for r in done),
        "requests_with_tools": sum(r["tools"] for r in done),
        "total_duration_ms": sum(durations) / 1000,
        "average_duration_ms": sql_round(sum(durations) / 1000 / ok, 2) if ok else None,
        "average_tokens_per_request": sql_round(sum(r["prompt"] + r["completion"] for r in done)
                                            / ok, 2) if ok else None,
        "total_cost_usd": sum(cost_p(r) for r in reqs) / 1e12,
        "prompt_cost_usd": None,
        "completion_cost_usd": None,
        "output_tokens_per_second": sql_round(
            sum(c for c, _ in gen) / (sum(g for _, g in gen) / 1e6), 2) if gen else None,
    }[name]


def attributes(r: dict) -> dict:
    """The request's dimensions: the terminal event's when it has them, else the start's;
    tags from both."""
    terminal = r["outcome"] is not None
    user = r["user_t"] if terminal and r["user_t"] is not None else (
        r["user_s"] if r["start"] else None)
    tags = set(r["tags_t"] if terminal else []) | set(r["tags_s"] if r["start"] else [])
    return dict(model=r["model"] if terminal else r["start_model"], user_id=user,
                tags=sorted(tags), provider=r["provider"], session_id=r["session"],
                error_type=r["error"] if r["outcome"] == "failed" else None,
                finish_reason=r["finish"] if r["outcome"] == "completed" else None)


def oracle_rows(reqs: list[dict], positions: dict, q: dict, as_of: int | None) -> list[dict]:
    def finished(r):
        if not r["outcome"]:
            return False
        if as_of is not None and positions[(r["session"], r["rid"], "t")] > as_of:
            return False
        end = r["t"] + r["took"]
        return q["window"] is None or q["window"][0] <= end < q["window"][1]

    def keep(r):
        a = attributes(r)
        for dim, values in q["where"].items():
            if dim == "tag":
                if not set(a["tags"]) & set(values):
                    return False
            elif a[dim] not in values:
                return False
        return True

    groups: dict[tuple, list] = {}
    for r in filter(keep, filter(finished, reqs)):
        a = attributes(r)
        keys = [()]
        for dim in q["group_by"]:
            if dim == "tag":
                values = a["tags"] or [None]
            elif dim == "time":
                width = query.BUCKETS[q["bucket"]]
                end_us = T0_US + (r["t"] + r["took"]) * 1_000_000
                at = end_us - end_us % width
                values = [datetime.fromtimestamp(at / 1e6, timezone.utc)]
            else:
                values = [a[dim]]
            keys = [k + (v,) for k in keys for v in values]
        for k in keys:
            groups.setdefault(k, []).append(r)
    if not q["group_by"] and not groups:
        groups[()] = []
    return [dict(zip(q["group_by"], k), _reqs=v) for k, v in groups.items()]


def sql_round(x: float, digits: int) -> float:
    """The engine's `round(x, digits)`: the exact value of x to `digits` decimals, halves away
    from zero (Python's `round` sends them to even: 759.125 is 759.12 there, 759.13 here)."""
    return float(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def same(got, want) -> bool:
    if want is None or got is None:
        return got is None and want is None
    if isinstance(want, float) or isinstance(got, float):
        return abs(got - want) <= 1e-9 * max(1.0, abs(want)) + 1e-9
    return got == want


# ---- running the real thing ---------------------------------------------------------------------

async def ingest_all(store, facts: Facts, events: list[dict], rng: random.Random) -> dict:
    """Post in random batches, some twice, applying what each commit appends (the writer's
    path). Returns (session, request, s|t) -> log position."""
    positions = {}
    batches, i = [], 0
    while i < len(events):
        k = rng.randint(1, 6)
        batches.append(events[i:i + k])
        i += k
    batches += rng.sample(batches, k=len(batches) // 3)  # re-posted: all duplicates
    for batch in batches:
        wire = [_decode.decode(json.dumps(e).encode()) for e in batch]
        [result] = await store.append([prepare(wire)])
        assert isinstance(result, Accepted)
        for position, event in result.rows:
            sid, rid, half = event.event_id.split("|")
            positions[(sid, rid, half)] = position
        await facts.apply_rows([(p, e.record) for p, e in result.rows])
    return positions


async def dump(facts: Facts) -> dict:
    """Every fact, sorted: what two read sides must agree on."""
    order = ", ".join(FACT_FIELDS)
    return {table: await facts.engine.read(f"SELECT * FROM {table} ORDER BY {order}")
            for table in ("requests", "pending")}


def to_question(q: dict, as_of: int | None) -> Question:
    window = q["window"]
    return Question(
        group_by=q["group_by"], measures=q["measures"], where=q["where"],
        from_us=None if window is None else T0_US + window[0] * 1_000_000,
        to_us=None if window is None else T0_US + window[1] * 1_000_000,
        as_of_position=as_of, bucket=q["bucket"], limit=1000)


async def scenario(reqs, qs, rng, tmp: Path):
    events = [e for r in reqs for e in events_of(r)]
    rng.shuffle(events)
    store = await SQLiteStore.open(tmp / "p.db")
    await store.migrate()
    engines = []
    try:
        def engine(name):
            engines.append(Engine.open(tmp / name))
            return engines[-1]

        live = await Facts.open(engine("live.duckdb"), PRICES)
        positions = await ingest_all(store, live, events, rng)
        last = await store.last_position()
        answers = []
        for q in qs:
            as_of = None if q["as_of"] is None else int(last * q["as_of"])
            got = await query.ask(live, to_question(q, as_of))
            answers.append((q, as_of, got.rows))
        overall = await query.overview(live, Scope(stale_after_us=STALE_S * 1_000_000))

        # Replay == live: the same facts from the log alone, in pages of 7.
        replayed = await Facts.open(engine("replayed.duckdb"), PRICES)
        await catch_up(store, replayed, page=7)
        # Persisted + tail == full: half the log, closed, reopened, then the rest.
        half_engine = Engine.open(tmp / "half.duckdb")
        half = await Facts.open(half_engine, PRICES)
        rows = await store.read(0, last // 2)
        from events.codec import decode
        await half.apply_rows([(p, decode(payload)) for p, _, payload, _ in rows])
        half_engine.close()
        reopened = await Facts.open(engine("half.duckdb"), PRICES)
        assert reopened.position == (rows[-1][0] if rows else 0)
        await catch_up(store, reopened)
        return (positions, answers, overall[None], await dump(live), await dump(replayed),
                await dump(reopened))
    finally:
        for e in engines:
            e.close()
        await store.close()


def check_answers(reqs, positions, answers, overall):
    for q, as_of, rows in answers:
        want = oracle_rows(reqs, positions, q, as_of)
        key = lambda row: tuple(str(row.get(d)) for d in q["group_by"])  # noqa: E731
        got_by = {key(row): row for row in rows}
        want_by = {key(w): w for w in want}
        assert set(got_by) == set(want_by), (q, as_of)
        for k, w in want_by.items():
            g = got_by[k]
            for m in q["measures"]:
                expected = measure(m, w["_reqs"])
                if expected is None and m in ("prompt_cost_usd", "completion_cost_usd"):
                    continue  # checked through their sum below
                assert same(g[m], expected), (m, k, g[m], expected, q, as_of)
            if "prompt_cost_usd" in q["measures"] and "completion_cost_usd" in q["measures"]:
                assert same(g["prompt_cost_usd"] + g["completion_cost_usd"],
                            measure("total_cost_usd", w["_reqs"]))

    # Pending requests and sessions over the whole log.
    newest = max(t for r in reqs for t in ([r["t"]] if r["start"] else [])
                 + ([r["t"] + r["took"]] if r["outcome"] else []))
    pending = [r for r in reqs if r["start"] and not r["outcome"]]
    stale = [r for r in pending if r["t"] < newest - STALE_S]
    assert overall["stale_requests"] == len(stale)
    assert overall["in_flight_requests"] == len(pending) - len(stale)
    assert overall["total_sessions"] == len({r["session"] for r in reqs})
    assert overall["total_requests"] == sum(1 for r in reqs if r["outcome"])


@settings(max_examples=30, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(requests(), st.lists(questions(), min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_every_answer_equals_the_oracle_in_any_order(reqs, qs, rng):
    with tempfile.TemporaryDirectory() as tmp:
        positions, answers, overall, live, replayed, reopened = asyncio.run(
            scenario(reqs, qs, rng, Path(tmp)))
    assert live == replayed == reopened
    check_answers(reqs, positions, answers, overall)


def test_one_example():
    """A fixed stream through every rule, also the place to paste a falsifying example."""
    base = dict(provider=None, user_s=None, tags_s=[], start=True, took=5, duration=1000.0,
                ttft=None, prompt=4000, completion=100, cached=1000, cache_write=500,
                reasoning=0, tools=False, error="Timeout", finish="stop", cost=None,
                start_model="gpt-4o")
    reqs = [
        dict(base, session="s1", rid="a", model="gpt-4o", user_t="u1", tags_t=["x"],
             outcome="completed", t=0),
        dict(base, session="s1", rid="b", model="gpt-4o", user_t=None, user_s="u3",
             tags_t=[], tags_s=["z"], outcome="completed", t=4000, prompt=100, cached=0,
             cache_write=0),
        dict(base, session="s2", rid="c", model="mystery", user_t="u1", tags_t=["x", "y"],
             outcome="failed", t=10),
        dict(base, session="s2", rid="d", model="gpt-4", user_t="u2", tags_t=[],
             outcome=None, t=0),
    ]
    qs = [dict(group_by=("user_id", "tag"), measures=("total_requests", "total_cost_usd",
                                                       "duration_ms_p95"),
               where={}, window=None, bucket=None, as_of=None),
          dict(group_by=("time",), measures=("failed_requests",), where={"tag": ("x",)},
               window=(0, 3600), bucket="1h", as_of=0.7)]
    with tempfile.TemporaryDirectory() as tmp:
        positions, answers, overall, live, replayed, reopened = asyncio.run(
            scenario(reqs, qs, random.Random(4), Path(tmp)))
    assert live == replayed == reopened
    check_answers(reqs, positions, answers, overall)
    by_user = {(r["user_id"], r["tag"]): r for r in answers[0][2]}
    # Request a: 4000 prompt tokens is above the 3000 tier: (2500*5 + 1000*2.5 + 500*6.25) /1e6
    # + 100*20/1e6; request b falls in the second period (after 01:00): 100*2 + 100*8.
    assert by_user[("u1", "x")]["total_cost_usd"] == pytest.approx(
        (2500 * 5 + 1000 * 2.5 + 500 * 6.25 + 100 * 20) / 1e6, abs=1e-12)
    assert by_user[("u3", "z")]["total_cost_usd"] == pytest.approx((100 * 2 + 100 * 8) / 1e6)
