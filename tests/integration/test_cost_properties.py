"""Every cost, through the real ingest, fact store and query layer over HTTP, equals an oracle
written here from the raw requests and the raw price JSON, before and after `PUT /prices`
(and after `DELETE /prices`): dated periods, tiers, cache reads and writes, patterns, caller
cost, unpriced models."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import tempfile
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.config import Config
from tests.conftest import AUTH

pytestmark = pytest.mark.slow

# Each example starts a real app (SQLite log, DuckDB facts): about a second on a busy machine.
EXAMPLES = int(os.environ.get("COST_EXAMPLES", "15"))
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAYS = 10
MODELS = ["alpha", "alpha-2026-01", "beta", "gamma"]  # alpha-*: a pattern; gamma: unpriced
price = st.decimals(min_value=0, max_value=50, places=3).map(float)


def at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


@st.composite
def rates(draw, tier: bool) -> dict:
    out = {"input": draw(price), "output": draw(price)}
    for field in ("cached_input", "cache_write"):
        if draw(st.booleans()):
            out[field] = draw(price)
    if tier and draw(st.booleans()):
        out["above"] = {"prompt_tokens": draw(st.integers(0, 3000)), **draw(rates(False))}
    return out


@st.composite
def tables(draw) -> dict:
    n = draw(st.integers(1, 3))
    starts = sorted(draw(st.sets(st.integers(0, DAYS * 86_400), min_size=n, max_size=n)))
    periods = [{"from": at(s), **draw(rates(True))} for s in starts]
    return {"models": {"alpha": {"patterns": ["alpha-*"], "prices": periods},
                       "beta": draw(rates(True))}}


def boundaries(table: dict) -> list[int]:
    return [int((datetime.fromisoformat(p["from"]) - T0).total_seconds())
            for p in table["models"]["alpha"]["prices"]]


@st.composite
def scenarios(draw):
    before, after = draw(tables()), draw(tables())
    edges = boundaries(before) + boundaries(after)
    requests = []
    for i in range(draw(st.integers(1, 12))):
        prompt = draw(st.integers(0, 5000))
        cached = draw(st.integers(0, prompt))
        write = draw(st.integers(0, prompt - cached))
        t = draw(st.one_of(st.integers(-86_400, (DAYS + 1) * 86_400), st.sampled_from(edges)))
        requests.append(dict(
            rid=f"r{i}", model=draw(st.sampled_from(MODELS)), t=t,
            prompt=prompt, cached=cached, write=write, completion=draw(st.integers(0, 3000)),
            cost_usd=draw(st.one_of(st.none(), st.none(), price)),
            failed=draw(st.integers(0, 5)) == 0))
    return before, after, requests


def entry_of(table: dict, model: str) -> dict | None:
    if model in table["models"]:
        return table["models"][model]
    return table["models"]["alpha"] if model.startswith("alpha-") else None


def oracle_cost(table: dict, r: dict) -> Fraction:
    """USD of one request, read straight from the rules and the JSON."""
    if r["failed"]:
        return Fraction(0)
    if r["cost_usd"] is not None:
        return Fraction(str(r["cost_usd"]))
    entry = entry_of(table, r["model"])
    if entry is None:
        return Fraction(0)
    periods = entry.get("prices", [entry])
    chosen = periods[0]
    for p in periods[1:]:
        if datetime.fromisoformat(p["from"]) <= T0 + timedelta(seconds=r["t"]):
            chosen = p
    if "above" in chosen and r["prompt"] > chosen["above"]["prompt_tokens"]:
        chosen = chosen["above"]
    rate = {k: Fraction(str(chosen.get(k, chosen["input"])))
            for k in ("input", "output", "cached_input", "cache_write")}
    fresh = r["prompt"] - r["cached"] - r["write"]
    return (fresh * rate["input"] + r["cached"] * rate["cached_input"]
            + r["write"] * rate["cache_write"] + r["completion"] * rate["output"]) / 1_000_000


def events(requests: list[dict]) -> list[dict]:
    out = []
    for r in requests:
        common = dict(session_id="s", request_id=r["rid"], model=r["model"])
        out.append(dict(type="LLM_REQUEST_STARTED", timestamp=at(r["t"] - 1), **common))
        if r["failed"]:
            out.append(dict(type="LLM_REQUEST_FAILED", timestamp=at(r["t"]),
                            error_type="Timeout", **common))
            continue
        done = dict(type="LLM_REQUEST_COMPLETED", timestamp=at(r["t"]), duration_ms=1000,
                    prompt_tokens=r["prompt"], completion_tokens=r["completion"], **common)
        if r["cached"]:
            done["cached_prompt_tokens"] = r["cached"]
        if r["write"]:
            done["cache_write_prompt_tokens"] = r["write"]
        if r["cost_usd"] is not None:
            done["cost_usd"] = r["cost_usd"]
        out.append(done)
    return out


async def check_costs(client: TestClient, table: dict, requests: list[dict]) -> None:
    expected: dict[str, Fraction] = {}
    for r in requests:
        expected[r["model"]] = expected.get(r["model"], Fraction(0)) + oracle_cost(table, r)
    resp = await client.get("/events/metrics/query", headers=AUTH,
                            params={"group_by": "model", "measures": "total_cost_usd"})
    assert resp.status == 200, await resp.text()
    got = {row["model"]: row["total_cost_usd"] for row in (await resp.json())["rows"]}
    assert got.keys() == expected.keys()
    for model, usd in expected.items():
        assert got[model] == pytest.approx(float(usd), rel=1e-9, abs=1e-12), model
    overall = await (await client.get("/events/metrics", headers=AUTH)).json()
    assert overall["total_cost_usd"] == pytest.approx(float(sum(expected.values())),
                                                      rel=1e-9, abs=1e-12)
    unpriced = {r["model"] for r in requests if not r["failed"] and r["cost_usd"] is None
                and entry_of(table, r["model"]) is None}
    assert set(overall["unpriced_models"]) == unpriced


async def scenario(before: dict, after: dict, requests: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        configured = Path(folder, "prices.json")
        configured.write_text(json.dumps(before))
        config = dataclasses.replace(Config(), db=f"{folder}/events.db", prices=str(configured))
        async with TestClient(TestServer(create_app(config))) as client:
            posted = await client.post("/events", json=events(requests), headers=AUTH)
            assert posted.status == 201, await posted.text()
            await check_costs(client, before, requests)
            put = await client.put("/prices", json=after, headers=AUTH)
            assert put.status == 200, await put.text()
            await check_costs(client, after, requests)
            assert (await client.delete("/prices", headers=AUTH)).status == 200
            await check_costs(client, before, requests)


@settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_every_cost_equals_the_oracle_before_and_after_a_price_change(case):
    asyncio.run(scenario(*case))
