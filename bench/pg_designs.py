"""How the PostgreSQL append designs compare, at the store (no HTTP, no read models): one-event
appends from 1, 2 and 3 "replicas" (a `PostgresStore` each, its own pool) with 8 appending
tasks per replica, for each of

- `horizon`: the design in use (no lock; NOTIFY after the commit, in its own statement);
- `notify_inside`: the same with the NOTIFY inside the append transaction (PostgreSQL then
  serialises the commits: a transaction that queued a notification takes a database-wide lock
  at commit);
- `global_lock`: every append takes one transaction-level advisory lock first and holds it to
  its commit (the design before issue 14).

The ceiling is the same rows inserted by plain asyncpg one-row commits from as many tasks. The
figures back the choice in docs/scaling.md.

    python -m bench.pg_designs [--smoke]
"""

from __future__ import annotations

import asyncio
import time

from bench import dataset
from bench.common import FULL, Figure, Sizes, main_for, ratio
from bench.pg_ingest_single import commit_per_row_ceiling
from bench.postgres import fresh_schema
from events.postgres_store import PostgresStore, _key
from events.store import NewEvent
from service.ingest import parse_body

TASKS_PER_REPLICA = 8


class NotifyInside(PostgresStore):
    async def append_in(self, conn, batches):
        results = await super().append_in(conn, batches)
        await conn.execute("SELECT pg_notify($1, '')", self.channel)
        return results

    async def _notify(self, conn) -> None:
        pass


class GlobalLock(PostgresStore):
    async def append_in(self, conn, batches):
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _key(self.schema, "append"))
        return await super().append_in(conn, batches)


DESIGNS = {"horizon": PostgresStore, "notify_inside": NotifyInside, "global_lock": GlobalLock}


def events(count: int, tag: str) -> list[NewEvent]:
    body = "\n".join(f'{{"type": "LLM_REQUEST_STARTED", "session_id": "{tag}-{n % 97}", '
                     f'"request_id": "r{n}", "model": "m", "timestamp": "2026-11-27T10:00:00Z"}}'
                     for n in range(count))
    return parse_body(body.encode(), "application/x-ndjson")


async def appends_per_s(design: type[PostgresStore], url: str, replicas: int,
                        seconds: float) -> float:
    stores = [await design.open(url, pool_size=TASKS_PER_REPLICA) for _ in range(replicas)]
    await stores[0].migrate()
    pending = iter(events(200_000, design.__name__))
    deadline = time.perf_counter() + seconds
    done = 0

    async def task(store):
        nonlocal done
        while time.perf_counter() < deadline:
            await store.append([[next(pending)]])
            done += 1

    try:
        started = time.perf_counter()
        await asyncio.gather(*(task(s) for s in stores for _ in range(TASKS_PER_REPLICA)))
        return done / (time.perf_counter() - started)
    finally:
        for store in stores:
            await store.close()


def run(sizes: Sizes = FULL) -> list[Figure]:
    figures = []
    bodies = list(dataset.batches(sizes.batch_events, max(1, sizes.batch_events // 10), 1))
    for replicas in sizes.design_replicas:
        with fresh_schema("designs_ceiling") as (_, url):
            bare = asyncio.run(commit_per_row_ceiling(bodies, url, replicas * TASKS_PER_REPLICA,
                                                      sizes.seconds))
        for name, design in DESIGNS.items():
            with fresh_schema(f"designs_{name}") as (_, url):
                rate = asyncio.run(appends_per_s(design, url, replicas, sizes.seconds))
            figures.append(Figure(
                name=f"store appends, PostgreSQL, {name}, {replicas} replica"
                     f"{'s' * (replicas > 1)}",
                workload=f"one-event PostgresStore.append from {replicas} stores x "
                         f"{TASKS_PER_REPLICA} tasks, {sizes.seconds:g} s",
                value=round(rate), unit="appends/s", ceiling=round(bare),
                ceiling_what=f"asyncpg one-row INSERT + commit, {replicas * TASKS_PER_REPLICA}"
                             " connections",
                ratio=round(ratio(rate, bare), 3), target="(compares designs)", met=True))
    return figures


if __name__ == "__main__":
    main_for(run)
