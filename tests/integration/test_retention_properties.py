"""Retention sweeps racing with ingest, through the real app (HTTP ingest, writer, SQLite log,
DuckDB facts, query API), compared with an oracle written here: exactly the requests older than
the retention go, and nothing posted while a sweep runs is lost.

A failure prints the scenario (hypothesis' falsifying example, and a blob to reproduce it with
`@reproduce_failure`).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import keys
from service.app import create_app
from service.config import Config
from tests.postgres import dsn_with_schema, fresh_schema

AUTH = {"x-internal-auth": "secret"}
RETENTION_S = 3600


@st.composite
def requests(draw, prefix: str, old_allowed: bool):
    """(session, request id, age in minutes of start and of end or None, failed?)"""
    out = []
    for i in range(draw(st.integers(0, 12))):
        session = f"{prefix}s{draw(st.integers(0, 3))}"
        # Ages either side of the retention, never within a minute of the cutoff.
        ages = st.sampled_from([1, 10, 59, 61, 90, 300] if old_allowed else [1, 5, 20, 45])
        end = draw(st.one_of(st.none(), ages))
        start = draw(ages) if end is None else end + draw(st.sampled_from([0, 30, 200]))
        out.append((session, f"{prefix}r{i}", start, end, draw(st.booleans())))
    return out


def wire(requests, now: datetime) -> list[dict]:
    def at(minutes):
        return (now - timedelta(minutes=minutes)).isoformat()

    events = []
    for session, request, start, end, failed in requests:
        common = dict(session_id=session, request_id=request, model="gpt-4")
        events.append(dict(common, type="LLM_REQUEST_STARTED", timestamp=at(start),
                           event_id=f"{request}-s"))
        if end is not None:
            kind = dict(type="LLM_REQUEST_FAILED", error_type="X") if failed else dict(
                type="LLM_REQUEST_COMPLETED", duration_ms=1, prompt_tokens=1,
                completion_tokens=1)
            events.append(dict(common, **kind, timestamp=at(end), event_id=f"{request}-t"))
    return events


def kept(requests) -> list[tuple]:
    """The oracle: a request stays when its terminal event (its start, if it has none) is
    younger than the retention."""
    return [r for r in requests if (r[3] if r[3] is not None else r[2]) * 60 < RETENTION_S]


@st.composite
def scenarios(draw):
    before = draw(requests("b", old_allowed=True))
    during = [draw(requests(f"d{n}", old_allowed=False)) for n in range(draw(st.integers(1, 4)))]
    sweeps = draw(st.integers(1, 3))
    return before, during, sweeps


async def run(before, during, sweeps, backend: str = "sqlite") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            await run_on(str(Path(tmp) / "events.db"), tmp, before, during, sweeps)
            return
        async with fresh_schema("retprop") as schema:
            await run_on(dsn_with_schema(schema), tmp, before, during, sweeps)


async def run_on(db: str, tmp: str, before, during, sweeps) -> None:
    now = datetime.now(timezone.utc)
    now_us = time.time_ns() // 1000
    config = Config(db=db, facts=str(Path(tmp) / "facts.duckdb"), retention=RETENTION_S,
                    retention_sweep=3600)
    app = create_app(config)
    async with TestClient(TestServer(app)) as client:
        async def post(events):
            if events:
                r = await client.post("/events", json=events, headers=AUTH)
                assert r.status == 201, await r.text()

        await post(wire(before, now))
        lifecycle = app[keys.LIFECYCLE]
        await asyncio.gather(*[lifecycle.sweep(now_us) for _ in range(sweeps)],
                             *[post(wire(batch, now)) for batch in during])
        await lifecycle.sweep(now_us)  # whatever raced, one more sweep settles the old

        expected = kept(before) + [r for batch in during for r in batch]
        r = await client.get("/events?after=0&limit=10000", headers=AUTH)
        exported = sorted(line.split('"event_id":"')[1].split('"')[0]
                          for line in (await r.text()).splitlines() if line)
        assert exported == sorted(
            f"{req}-{suffix}" for _, req, _, end, _ in expected
            for suffix in (("s", "t") if end is not None else ("s",)))
        metrics = await (await client.get("/events/metrics", headers=AUTH)).json()
        finished = [r for r in expected if r[3] is not None]
        assert metrics["total_requests"] == len(finished)
        assert metrics["failed_requests"] == sum(1 for r in finished if r[4])
        assert metrics["total_sessions"] == len({r[0] for r in expected})


@settings(max_examples=25, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_sweeps_racing_with_ingest_remove_exactly_the_old_requests(scenario):
    asyncio.run(run(*scenario))


@settings(max_examples=8, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_on_postgresql_too(scenario):
    """The same on a shared PostgreSQL log (a fresh schema per example; skipped without a
    server)."""
    asyncio.run(run(*scenario, backend="postgresql"))


def test_one_example():
    """A fixed scenario, for rerunning a falsifying example by hand."""
    before = [("bs0", "br0", 300, 90, False), ("bs0", "br1", 61, None, False),
              ("bs1", "br2", 200, 10, True), ("bs1", "br3", 5, None, False)]
    during = [[("d0s0", "d0r0", 1, None, False), ("d0s1", "d0r1", 30, 1, True)]]
    asyncio.run(run(before, during, 2))
