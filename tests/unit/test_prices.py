"""The price table's rules: parsed on `PriceTable` itself (periods, patterns, validation paths,
the digest), and charged by the one place that computes cost, the query layer's SQL, through a
real facts file (`cost_of`): periods, tiers, cache reads and writes; and the shipped table."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncio
import itertools
import tempfile
from typing import NamedTuple

from events.records import Completed
from projections import query
from projections.engine import Engine
from projections.facts import Facts
from projections.prices import PICO, PriceError, PriceTable, default_prices

M = 1_000_000


class Cost(NamedTuple):
    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


_DIR = tempfile.TemporaryDirectory()
_ENGINE = Engine.open(f"{_DIR.name}/facts.duckdb")
_FACTS = asyncio.run(Facts.open(_ENGINE, default_prices()))
_SESSIONS = itertools.count(1)


def cost_of(prices: PriceTable, model: str, at_us: int, prompt_tokens: int,
            completion_tokens: int, cached_prompt_tokens: int = 0,
            cache_write_prompt_tokens: int = 0) -> Cost | None:
    """What the service charges for one completed request (pico-dollars), or None when the
    table does not price it: applied to real facts and asked through the query layer."""
    session = f"c{next(_SESSIONS)}"

    async def ask():
        await _FACTS.set_prices(prices)
        await _FACTS.apply_rows([(_FACTS.position + 1, Completed(
            session, "r", model, at_us, 1.0, prompt_tokens, completion_tokens,
            prompt_tokens + completion_tokens, cached_prompt_tokens=cached_prompt_tokens,
            cache_write_prompt_tokens=cache_write_prompt_tokens))])
        answer = await query.ask(_FACTS, query.Question(
            measures=("prompt_cost_usd", "completion_cost_usd"), where={"session_id": (session,)}))
        page = await query.session_requests(_FACTS, session, 1, None)
        return answer.rows[0], page.requests[0].priced

    row, priced = asyncio.run(ask())
    if not priced:
        return None
    return Cost(round(row["prompt_cost_usd"] * PICO), round(row["completion_cost_usd"] * PICO))


def table(models: dict) -> PriceTable:
    return PriceTable.from_json(json.dumps({"models": models}).encode())


def us(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * M)


SONNET = {"claude-sonnet-4-5": {"patterns": ["claude-sonnet-4-5-*"], "prices": [
    {"from": "2025-09-29", "input": 3.0, "output": 15.0, "cached_input": 0.3,
     "cache_write": 3.75,
     "above": {"prompt_tokens": 200_000, "input": 6.0, "output": 22.5, "cached_input": 0.6,
               "cache_write": 7.5}}]}}
DATED = {"m": {"prices": [
    {"from": "2025-01-01", "input": 1.0, "output": 2.0},
    {"from": "2025-06-01T12:00:00+02:00", "input": 10.0, "output": 20.0},
    {"from": "2026-01-01", "input": 100.0, "output": 200.0}]}}


def usd(cost) -> float:
    return cost.total / PICO


def test_flat_entry_is_one_period_since_always_with_cache_prices_defaulting_to_input():
    (period,) = table({"my-finetune": {"input": 1.0, "output": 2.0}}).periods("my-finetune")
    assert period.from_us is None
    assert (period.input, period.output, period.cached_input, period.cache_write) == (1, 2, 1, 1)
    assert period.above_prompt_tokens is None and period.above_input is None


def test_periods_exposed_oldest_first_the_first_one_open_ended():
    periods = table(DATED).periods("m")
    assert [p.from_us for p in periods] == [None, us("2025-06-01T10:00:00+00:00"),
                                            us("2026-01-01T00:00:00+00:00")]
    assert [p.input for p in periods] == [1.0, 10.0, 100.0]


@pytest.mark.parametrize("when,price", [
    ("2020-01-01T00:00:00+00:00", 1.0),            # older than every period: the first one
    ("2025-01-01T00:00:00+00:00", 1.0),
    ("2025-06-01T09:59:59.999999+00:00", 1.0),     # a microsecond before the second `from`
    ("2025-06-01T10:00:00+00:00", 10.0),           # exactly at a `from`: the new period
    ("2025-12-31T23:59:59+00:00", 10.0),
    ("2026-01-01T00:00:00+00:00", 100.0),
    ("2030-01-01T00:00:00+00:00", 100.0),          # after the last: the last one
])
def test_a_request_is_priced_by_the_last_period_started_at_its_time(when, price):
    prices = table(DATED)
    assert usd(cost_of(prices, "m", us(when), M, 0)) == pytest.approx(price)


def test_tier_applies_only_above_the_boundary_and_then_to_the_whole_request():
    prices = table(SONNET)
    at = us("2025-10-01T00:00:00+00:00")
    at_boundary = cost_of(prices, "claude-sonnet-4-5", at, 200_000, 1000)
    assert at_boundary.prompt == 200_000 * 3 * M and at_boundary.completion == 1000 * 15 * M
    above = cost_of(prices, "claude-sonnet-4-5", at, 200_001, 1000)
    assert above.prompt == 200_001 * 6 * M
    assert above.completion == 1000 * 22.5 * M  # the completion too, not just the excess


def test_anthropic_cache_reads_and_writes_are_parts_of_the_prompt():
    # 10,000 prompt tokens: 6,000 read from the cache, 3,000 written to it, 1,000 fresh.
    cost = cost_of(table(SONNET), "claude-sonnet-4-5-20250929", us("2025-10-01T00:00:00+00:00"),
                              prompt_tokens=10_000, completion_tokens=500,
                              cached_prompt_tokens=6_000, cache_write_prompt_tokens=3_000)
    assert cost.prompt / PICO == pytest.approx(1_000 * 3e-6 + 6_000 * 0.3e-6 + 3_000 * 3.75e-6)
    assert cost.prompt / PICO == pytest.approx(0.01605)
    assert cost.completion / PICO == pytest.approx(0.0075)


def test_tier_cache_prices_default_to_the_tier_input():
    prices = table({"g": {"input": 1.0, "output": 2.0, "cached_input": 0.1,
                          "above": {"prompt_tokens": 10, "input": 4.0, "output": 8.0}}})
    (period,) = prices.periods("g")
    assert (period.above_cached_input, period.above_cache_write) == (4.0, 4.0)
    cost = cost_of(prices, "g", 0, prompt_tokens=11, completion_tokens=0, cached_prompt_tokens=5,
                       cache_write_prompt_tokens=6)
    assert cost.prompt == 11 * 4 * M


def test_cache_write_defaults_to_input_and_cached_input_to_input():
    cost = cost_of(table({"o": {"input": 2.0, "output": 8.0}}),
        "o", 0, prompt_tokens=100, completion_tokens=0, cached_prompt_tokens=30,
        cache_write_prompt_tokens=20)
    assert cost.prompt == 100 * 2 * M


def test_exact_name_then_longest_pattern_then_unpriced():
    prices = table({
        "gpt-4o": {"input": 2.5, "output": 10.0, "patterns": ["gpt-4o*"]},
        "gpt-4o-mini": {"input": 0.15, "output": 0.6, "patterns": ["gpt-4o-mini-*"]},
        "gpt-4o-mini-special": {"input": 9.0, "output": 9.0},
    })
    assert prices.name_of("gpt-4o-2024-08-06") == "gpt-4o"
    assert prices.name_of("gpt-4o-mini-2024-07-18") == "gpt-4o-mini"
    assert prices.name_of("gpt-4o-mini-special") == "gpt-4o-mini-special"
    assert prices.periods("llama-3") == [] and cost_of(prices, "llama-3", 0, 10, 10) is None
    assert prices.name_of("GPT-4O") is None  # patterns are case-sensitive, like model names


def test_the_seed_gpt4_prices_are_shipped():
    prices = default_prices()
    cost = cost_of(prices, "gpt-4", us("2026-11-27T10:00:00+00:00"), 1000, 1000)
    assert (cost.prompt / PICO, cost.completion / PICO) == (pytest.approx(0.03),
                                                             pytest.approx(0.06))
    assert prices.name_of("gpt-4-0613") == "gpt-4"


def test_shipped_table_dates_every_period_and_prices_anthropic_cache_writes():
    doc = json.loads(default_prices().to_json())
    for name, entry in doc["models"].items():
        assert all("from" in p for p in entry["prices"]), name
    sonnet = doc["models"]["claude-sonnet-4-5"]["prices"][0]
    assert sonnet["cache_write"] == 3.75 and sonnet["cached_input"] == 0.3
    assert sonnet["above"]["prompt_tokens"] == 200_000
    providers = {"gpt-", "claude-", "gemini-", "mistral-"}
    assert all(any(n.startswith(p) for n in doc["models"]) for p in providers)


def bad(models, **top) -> list[str]:
    with pytest.raises(PriceError) as err:
        PriceTable.from_json(json.dumps({"models": models, **top}).encode())
    assert err.value.problems[0].path in str(err.value)
    return [p.path for p in err.value.problems]


@pytest.mark.parametrize("models,path", [
    ({"x": {"prices": [{"input": 1, "output": 1,
                        "above": {"prompt_tokens": 5, "input": -1, "output": 1}}]}},
     '$.models["x"].prices[0].above.input'),
    ({"x": {"prices": [{"input": 1, "output": 1, "above": {"input": 2, "output": 2}}]}},
     '$.models["x"].prices[0].above.prompt_tokens'),
    ({"x": {"prices": [{"input": 1, "output": 1,
                        "above": {"prompt_tokens": 1.5, "input": 2, "output": 2}}]}},
     '$.models["x"].prices[0].above.prompt_tokens'),
    ({"x": {"input": 1}}, '$.models["x"].output'),
    ({"x": {"input": "1", "output": 1}}, '$.models["x"].input'),
    ({"x": {"input": True, "output": 1}}, '$.models["x"].input'),
    ({"x": {"input": 1, "output": 1, "cache_write": 2e6}}, '$.models["x"].cache_write'),
    ({"x": {"input": 1, "output": 1, "cached": 0.5}}, '$.models["x"].cached'),
    ({"x": {"input": 1, "output": 1, "patterns": "x-*"}}, '$.models["x"].patterns'),
    ({"x": {"input": 1, "output": 1, "patterns": ["x-*", ""]}}, '$.models["x"].patterns[1]'),
    ({"x": {"prices": []}}, '$.models["x"].prices'),
    ({"x": {"prices": [{"input": 1, "output": 1}, {"input": 2, "output": 2}]}},
     '$.models["x"].prices[1].from'),
    ({"x": {"prices": [{"from": "2025-02-01", "input": 1, "output": 1},
                       {"from": "2025-01-01", "input": 2, "output": 2}]}},
     '$.models["x"].prices[1].from'),
    ({"x": {"prices": [{"from": "2025-02-30", "input": 1, "output": 1}]}},
     '$.models["x"].prices[0].from'),
    ({"x": {"prices": [{"from": "2025-02-01T10:00:00", "input": 1, "output": 1}]}},
     '$.models["x"].prices[0].from'),  # a time without an offset is ambiguous
    ({"x": {"prices": [{"input": 1, "output": 1}], "input": 1}}, '$.models["x"].input'),
    ({"x": {"from": "2025-01-01", "input": 1, "output": 1}}, '$.models["x"].from'),
    ({"x": 3}, '$.models["x"]'),
    ({'we"ird': {"input": 1}}, '$.models["we\\"ird"].output'),
    ({"a": {"input": 1, "output": 1, "patterns": ["m-*"]},
      "b": {"input": 1, "output": 1, "patterns": ["m-*"]}}, '$.models["b"].patterns[0]'),
])
def test_a_bad_field_is_named_by_its_json_path(models, path):
    assert path in bad(models)


def test_every_problem_is_listed_and_bad_top_levels_are_named():
    assert bad({"x": {"input": -1}, "y": {"output": 1}}) == [
        '$.models["x"].input', '$.models["x"].output', '$.models["y"].input']
    assert bad({}, extra=1) == ["$.extra"]
    for body, path in [(b"[]", "$"), (b'{"model": {}}', "$.models"), (b"{", "$"),
                       (b'{"models": []}', "$.models")]:
        with pytest.raises(PriceError) as err:
            PriceTable.from_json(body)
        assert path in [p.path for p in err.value.problems]


def test_comments_and_a_served_digest_are_ignored():
    plain = table({"x": {"input": 1, "output": 2}})
    commented = PriceTable.from_json(json.dumps({
        "_comment": "mine", "digest": "whatever",
        "models": {"x": {"_why": "list price", "input": 1.0, "output": 2.0}}}).encode())
    assert commented.digest == plain.digest and len(commented) == 1
    # A model name is a name, even one starting with `_`.
    assert table({"_internal": {"input": 1, "output": 1}}).name_of("_internal") == "_internal"


def test_digest_is_of_the_normalised_table():
    flat = table({"x": {"input": 1, "output": 2}})
    spelled_out = table({"x": {"patterns": [], "prices": [
        {"input": 1.0, "output": 2.0, "cached_input": 1.0, "cache_write": 1.0}]}})
    assert flat.digest == spelled_out.digest
    assert table({"x": {"input": 1, "output": 2.5}}).digest != flat.digest
    same_time = table({"x": {"prices": [{"input": 1, "output": 1},
                                        {"from": "2025-06-01T12:00:00+02:00", "input": 2,
                                         "output": 2}]}})
    utc = table({"x": {"prices": [{"input": 1, "output": 1},
                                  {"from": "2025-06-01T10:00:00Z", "input": 2, "output": 2}]}})
    assert same_time.digest == utc.digest


def test_served_table_reads_back_to_the_same_table():
    shipped = default_prices()
    again = PriceTable.from_json(shipped.to_json())
    assert again.digest == shipped.digest
    assert json.loads(again.to_json()) == json.loads(shipped.to_json())
    served = json.loads(table(DATED).to_json())
    assert served["models"]["m"]["prices"][1]["from"] == "2025-06-01T10:00:00Z"
    assert served["models"]["m"]["prices"][2]["from"] == "2026-01-01"


# Property: any table, any request, the cost is what a direct reading of the JSON gives.

DAY = 86_400 * M
price = st.decimals(min_value=0, max_value=100, places=4).map(float)


@st.composite
def periods(draw):
    n = draw(st.integers(1, 4))
    days = sorted(draw(st.sets(st.integers(0, 2000), min_size=n, max_size=n)))
    out = []
    for i, day in enumerate(days):
        p = {"input": draw(price), "output": draw(price)}
        if i or draw(st.booleans()):
            p["from"] = datetime.fromtimestamp(day * 86_400 + 3600 * draw(st.integers(0, 23)),
                                               timezone.utc).isoformat()
        for field in ("cached_input", "cache_write"):
            if draw(st.booleans()):
                p[field] = draw(price)
        if draw(st.booleans()):
            p["above"] = {"prompt_tokens": draw(st.integers(0, 1000)), "input": draw(price),
                          "output": draw(price)}
        out.append(p)
    return out


def oracle(entry_periods: list[dict], at_us: int, prompt, completion, cached, write) -> Fraction:
    chosen = entry_periods[0]
    for p in entry_periods[1:]:
        if datetime.fromisoformat(p["from"]).timestamp() * M <= at_us:
            chosen = p
    rates = chosen
    if "above" in chosen and prompt > chosen["above"]["prompt_tokens"]:
        rates = chosen["above"]
    rate = {k: Fraction(str(rates.get(k, rates["input"])))
            for k in ("input", "output", "cached_input", "cache_write")}
    return ((prompt - cached - write) * rate["input"] + cached * rate["cached_input"]
            + write * rate["cache_write"] + completion * rate["output"]) / M


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          print_blob=True)
@given(periods(), st.integers(-10, 2010), st.integers(0, 2000), st.integers(0, 2000),
       st.data())
def test_cost_equals_a_direct_reading_of_the_table(entry, day, prompt, completion, data):
    boundaries = [p["above"]["prompt_tokens"] + d for p in entry if "above" in p for d in (0, 1)]
    prompt = data.draw(st.sampled_from([prompt, *boundaries]))
    cached = data.draw(st.integers(0, prompt))
    write = data.draw(st.integers(0, prompt - cached))
    at_us = day * DAY + data.draw(st.integers(0, DAY - 1))
    prices = table({"m": {"prices": entry}})
    got = cost_of(prices, "m", at_us, prompt, completion, cached, write)
    assert Fraction(got.total, PICO) == oracle(entry, at_us, prompt, completion, cached, write)
    assert PriceTable.from_json(prices.to_json()).digest == prices.digest


@pytest.mark.parametrize("model,when,tokens,usd", [
    ("gpt-4", "2026-11-27T10:00:00+00:00", (900, 600, 0, 0), 0.063),
    ("gpt-4o-2024-11-20", "2025-01-01T00:00:00+00:00", (2000, 100, 1024, 0), 0.00472),
    ("claude-sonnet-4-5-20250929", "2025-10-01T00:00:00+00:00", (10_000, 500, 6000, 3000),
     0.02355),
    ("claude-sonnet-4-5", "2025-10-01T00:00:00+00:00", (250_000, 2000, 0, 0), 1.545),
    ("claude-sonnet-4-5", "2025-10-01T00:00:00+00:00", (200_000, 2000, 0, 0), 0.63),
    ("o3", "2025-06-09T23:59:59+00:00", (1000, 1000, 0, 0), 0.05),
    ("o3", "2025-06-10T00:00:00+00:00", (1000, 1000, 0, 0), 0.01),
])
def test_the_readme_worked_examples_hold_for_the_shipped_table(model, when, tokens, usd):
    prompt, completion, cached, write = tokens
    cost = cost_of(default_prices(), model, us(when), prompt, completion, cached, write)
    assert cost.total / PICO == pytest.approx(usd)
