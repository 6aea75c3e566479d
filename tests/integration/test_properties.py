"""Random request streams, shuffled and re-posted, through the real ingest, store and fold,
compared with an oracle written here from the raw requests; replay equals live; snapshot plus
tail equals a full replay; as-of and windowed questions equal the oracle on the same slice."""

from __future__ import annotations

import asyncio
import collections
import json
import math
import random
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.schema import WireEvent
from events.sqlite_store import SQLiteStore
from events.store import Accepted
from projections import views
from projections.filters import EventFilter
from projections.prices import PriceTable
from projections.query import fold
from projections.timeseries import series
from projections.replay import (ReadModels, decode_snapshot, decode_state, encode_snapshot,
                                replay)
from service.ingest import prepare

PRICE_JSON = {"models": {"gpt-4": {"input": 30, "output": 60},
                         "gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25}}}
PRICES = PriceTable.from_json(json.dumps(PRICE_JSON).encode())
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
STALE_S = 600
_decode = msgspec.json.Decoder(WireEvent)


@st.composite
def requests(draw):
    n = draw(st.integers(1, 25))
    out = []
    for i in range(n):
        prompt = draw(st.integers(0, 5000))
        completion = draw(st.integers(0, 5000))
        duration = draw(st.integers(0, 120_000)) / draw(st.sampled_from([1, 4, 1000]))
        out.append(dict(
            session=draw(st.sampled_from(["s1", "s2", "team/a b", "ü🚀"])),
            rid=f"r{i}",
            model=draw(st.sampled_from(["gpt-4", "gpt-4o", "mystery"])),
            user=draw(st.sampled_from([None, "u1", "u2"])),
            tags=draw(st.lists(st.sampled_from(["x", "y"]), max_size=2, unique=True)),
            start=draw(st.booleans()),
            outcome=draw(st.sampled_from(["completed", "completed", "failed", None])),
            t=draw(st.integers(0, 7200)),
            took=draw(st.integers(0, 900)),
            duration=duration,
            ttft=draw(st.sampled_from([None, 0.0, 0.5])),
            prompt=prompt,
            completion=completion,
            cached=draw(st.integers(0, prompt)),
            reasoning=draw(st.integers(0, completion)),
            tools=draw(st.booleans()),
            error=draw(st.sampled_from(["Timeout", "RateLimit"])),
            cost=draw(st.sampled_from([None, None, 0.25])),
        ))
    return [r for r in out if r["start"] or r["outcome"]] or [dict(out[0], start=True)]


def us(seconds: int) -> int:
    return (T0 - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1) \
        + seconds * 1_000_000


def iso(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def events_of(r: dict) -> list[dict]:
    common = dict(session_id=r["session"], request_id=r["rid"], model=r["model"],
                  user_id=r["user"], tags=r["tags"])
    out = []
    if r["start"]:
        out.append(dict(common, type="LLM_REQUEST_STARTED", timestamp=iso(r["t"]),
                        event_id=f"{r['session']}|{r['rid']}|s"))
    end = dict(common, timestamp=iso(r["t"] + r["took"]), event_id=f"{r['session']}|{r['rid']}|t")
    if r["outcome"] == "completed":
        out.append(dict(end, type="LLM_REQUEST_COMPLETED", duration_ms=r["duration"],
                        prompt_tokens=r["prompt"], completion_tokens=r["completion"],
                        cached_prompt_tokens=r["cached"], reasoning_tokens=r["reasoning"],
                        has_tool_calls=r["tools"], cost_usd=r["cost"],
                        time_to_first_token_ms=None if r["ttft"] is None
                        else r["ttft"] * r["duration"]))
    elif r["outcome"] == "failed":
        out.append(dict(end, type="LLM_REQUEST_FAILED", error_type=r["error"]))
    return out


# ---- the oracle: straight from the requests, no shared code with the projections -------------

def exact_quantile(values, q):
    return sorted(values)[max(math.ceil(q * len(values)) - 1, 0)]


def cost(r):
    if r["cost"] is not None:
        return r["cost"]
    price = PRICE_JSON["models"].get(r["model"])
    if price is None:
        return 0.0
    cached_price = price.get("cached_input", price["input"])
    return ((r["prompt"] - r["cached"]) * price["input"] + r["cached"] * cached_price
            + r["completion"] * price["output"]) / 1e6


def ttft_of(r: dict) -> float:
    return 0.0 if r["ttft"] is None else r["ttft"] * r["duration"]


def oracle(reqs: list[dict], newest: int) -> dict:
    done = [r for r in reqs if r["outcome"] == "completed"]
    ttfts = [ttft_of(r) for r in done if r["ttft"] is not None]
    generating = [r for r in done if r["duration"] - ttft_of(r) > 0]
    failed = [r for r in reqs if r["outcome"] == "failed"]
    open_ = [r for r in reqs if r["start"] and not r["outcome"]]
    stale = [r for r in open_ if r["t"] < newest - STALE_S]
    return dict(
        total_requests=len(done) + len(failed),
        successful_requests=len(done),
        failed_requests=len(failed),
        total_duration_ms=sum(r["duration"] for r in done),
        total_prompt_tokens=sum(r["prompt"] for r in done),
        total_completion_tokens=sum(r["completion"] for r in done),
        total_tokens=sum(r["prompt"] + r["completion"] for r in done),
        cached_prompt_tokens=sum(r["cached"] for r in done),
        reasoning_tokens=sum(r["reasoning"] for r in done),
        requests_with_tools=sum(r["tools"] for r in done),
        total_cost_usd=sum(cost(r) for r in done),
        errors_by_type=dict(collections.Counter(r["error"] for r in failed)),
        in_flight_requests=len(open_) - len(stale),
        stale_requests=len(stale),
        p95=exact_quantile([r["duration"] for r in done], 0.95) if done else None,
        ttft_p95=exact_quantile(ttfts, 0.95) if ttfts else None,
        tokens_per_s=(round(sum(r["completion"] for r in generating)
                            / sum((r["duration"] - ttft_of(r)) / 1000 for r in generating), 2)
                      if generating else None),
        models=sorted({r["model"] for r in done + failed}),
    )


def close_to(got: float | None, want: float | None, rel: float) -> bool:
    if want is None or got is None:
        return got is None and want is None
    return abs(got - want) <= rel * abs(want) + 1e-6


def check(got: dict, want: dict) -> None:
    """Compare a response with the oracle, on the fields the response has."""
    for key in ("total_requests", "successful_requests", "failed_requests", "total_prompt_tokens",
                "total_completion_tokens", "total_tokens", "cached_prompt_tokens",
                "reasoning_tokens", "requests_with_tools", "errors_by_type", "in_flight_requests",
                "stale_requests"):
        if key in got:
            assert got[key] == want[key], key
    ttft_p95 = (got["time_to_first_token_ms_percentiles"] or {}).get("p95")
    if want["ttft_p95"] is None or want["ttft_p95"] > 1e-3:
        assert close_to(ttft_p95, want["ttft_p95"], 0.0101), (ttft_p95, want["ttft_p95"])
    # Durations are folded as whole microseconds, hence the small absolute slack.
    assert close_to(got["output_tokens_per_second"], want["tokens_per_s"], 0.001) or (
        want["tokens_per_s"] is not None and abs(got["output_tokens_per_second"]
                                                 - want["tokens_per_s"]) < 0.05)
    assert got["total_duration_ms"] == pytest.approx(want["total_duration_ms"], abs=1e-3 * 30)
    assert got["total_cost_usd"] == pytest.approx(want["total_cost_usd"], rel=1e-9, abs=1e-12)
    p95 = (got["duration_ms_percentiles"] or {}).get("p95")
    if want["p95"] is None:
        assert p95 is None
    elif want["p95"] > 1e-6:
        assert abs(p95 - want["p95"]) <= 0.0101 * want["p95"]
    if "by_model" in got:
        assert sorted(got["by_model"]) == want["models"]


# ---- running the real thing ---------------------------------------------------------------------

def views_of(models: ReadModels) -> dict:
    state = models.metrics.state
    cutoff = state.newest_event_us - STALE_S * 1_000_000
    return msgspec.to_builtins(dict(
        total=views.global_metrics(state, cutoff, models.prices),
        sessions={sid: views.session_metrics(state, sid, cutoff, models.prices)
                  for sid in state.sessions},
    ))


async def ingest_all(store, events: list[dict], rng: random.Random) -> ReadModels:
    """Post in random batches, some twice, applying what each commit appends (the live path)."""
    live = ReadModels(PRICES)
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
            live.apply(position, event.record)
    return live


def run(coro):
    return asyncio.run(coro)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(requests(), st.randoms(use_true_random=False))
def test_metrics_equal_the_oracle_in_any_order(reqs, rng):
    events = [e for r in reqs for e in events_of(r)]
    rng.shuffle(events)

    async def scenario():
        with tempfile.TemporaryDirectory() as tmp:
            store = await SQLiteStore.open(Path(tmp) / "p.db")
            await store.migrate()
            try:
                live = await ingest_all(store, events, rng)
                replayed = ReadModels(PRICES)
                await replay(store, replayed, page=7)
                # Snapshot part-way, restore, replay the tail.
                half = ReadModels(PRICES)
                await replay(store, half, until=len(events) // 2)
                restored = ReadModels(PRICES)
                snap = decode_snapshot(encode_snapshot(half, None))
                for p in restored.projections:
                    p.state = decode_state(p, snap.projections[p.name].state)
                restored.position = snap.position
                await replay(store, restored)
                windowed = await fold(store, PRICES, where=EventFilter(from_us=None, to_us=int(
                    (T0 + timedelta(seconds=3600) - datetime(1970, 1, 1, tzinfo=timezone.utc))
                    / timedelta(microseconds=1))), max_events=10**6)
                return live, replayed, restored, windowed
            finally:
                await store.close()

    live, replayed, restored, windowed = run(scenario())
    got = views_of(live)
    assert got == views_of(replayed) == views_of(restored)

    newest = max(t for r in reqs for t in ([r["t"]] if r["start"] else [])
                 + ([r["t"] + r["took"]] if r["outcome"] else []))
    check(got["total"], oracle(reqs, newest))
    assert got["total"]["total_sessions"] == len({r["session"] for r in reqs})
    for model, metrics in got["total"]["by_model"].items():
        check(metrics, oracle([r for r in reqs if r["model"] == model], newest))
    state = live.metrics.state
    cutoff = state.newest_event_us - STALE_S * 1_000_000
    for user in ("u1", "u2"):
        mine = [r for r in reqs if r["user"] == user]
        if any(r["outcome"] for r in mine):
            sliced = msgspec.to_builtins(views.global_metrics(state, cutoff, PRICES,
                                                              EventFilter(user_id=user)))
            check(sliced, oracle(mine, newest))
    hours = series(live.timeseries.state, PRICES, "1h", us(0), us(3 * 3600))
    assert [p.requests for p in hours.points] == [
        sum(1 for r in reqs if r["outcome"] and h * 3600 <= r["t"] + r["took"] < (h + 1) * 3600)
        for h in range(3)]
    assert [p.failed_requests for p in hours.points] == [
        sum(1 for r in reqs if r["outcome"] == "failed"
            and h * 3600 <= r["t"] + r["took"] < (h + 1) * 3600) for h in range(3)]
    for sid in {r["session"] for r in reqs}:
        check(got["sessions"][sid], oracle([r for r in reqs if r["session"] == sid], newest))

    # A window on event time: each event counts if its own time is inside.
    def clipped(r):
        start = r["start"] and r["t"] < 3600
        end = r["outcome"] if r["outcome"] and r["t"] + r["took"] < 3600 else None
        return dict(r, start=start, outcome=end)
    inside = [c for c in map(clipped, reqs) if c["start"] or c["outcome"]]
    if inside:
        win_newest = max(t for r in inside for t in ([r["t"]] if r["start"] else [])
                         + ([r["t"] + r["took"]] if r["outcome"] else []))
        check(views_of(windowed)["total"], oracle(inside, win_newest))
