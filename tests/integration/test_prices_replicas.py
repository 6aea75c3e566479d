"""With a shared PostgreSQL log, a table set by `PUT /prices` is the replica's own: saved in
its `data/replica-<port>.prices.json`, applied by it alone (README, "Running several
replicas"). Two real apps on one fresh schema, with real HTTP clients."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from service.app import create_app
from service.config import Config
from tests import factories as f
from tests.conftest import AUTH
from tests.postgres import dsn_with_schema, fresh_schema

CHEAP = {"models": {"gpt-4": {"input": 3.0, "output": 6.0}}}


async def total_cost(client) -> float:
    return (await (await client.get("/events/metrics", headers=AUTH)).json())["total_cost_usd"]


async def test_put_prices_is_per_replica(aiohttp_client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # replicas keep their own files in ./data
    async with fresh_schema("prices") as schema:
        base = Config(db=dsn_with_schema(schema), tail_poll=0.05)
        a, b = [await aiohttp_client(create_app(dataclasses.replace(
            base, port=port, facts=str(tmp_path / f"{port}.facts.duckdb"))))
            for port in (9101, 9102)]
        events = [f.started(), f.completed(prompt_tokens=1000, completion_tokens=1000)]
        assert (await a.post("/events", json=events, headers=AUTH)).status == 201
        for _ in range(200):  # b follows the shared log
            if (await (await b.get("/health")).json())["position"] == 2:
                break
            await asyncio.sleep(0.025)
        assert await total_cost(b) == pytest.approx(0.09)

        assert (await a.put("/prices", json=CHEAP, headers=AUTH)).status == 200
        assert await total_cost(a) == pytest.approx(0.009)
        assert await total_cost(b) == pytest.approx(0.09)
        assert Path("data/replica-9101.prices.json").exists()
        assert not Path("data/replica-9102.prices.json").exists()
