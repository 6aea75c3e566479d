"""Single-event ingest into one PostgreSQL log through 2 replicas: one-event POSTs spread over
both service processes (half the connections each), every answer after its commit. Both
replicas append to the same log, so their appends take turns on the log's advisory lock. The
ceiling is plain asyncpg: the same number of connections each inserting one row per commit,
with no lock and no duplicate checks, in this process.

    python -m bench.pg_ingest_single [--smoke]
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import asyncpg

from bench import dataset
from bench.common import FULL, Figure, Sizes, load, main_for, ratio
from bench.loadgen import Request
from bench.postgres import fresh_schema, migrated, replicas
from service.ingest import parse_body

REPLICAS = 2
TARGET_RATE = 2_000
# PostgreSQL's default max_connections is 100 and other work shares the server.
MAX_CEILING_CONNECTIONS = 32


async def commit_per_row_ceiling(bodies: list[bytes], url: str, connections: int,
                                 seconds: float) -> float:
    """Rows/s of `connections` connections each inserting one row per commit for `seconds`."""
    await (await migrated(url)).close()
    events = iter([parse_body(b, "application/json")[0] for b in bodies])
    positions = itertools.count(1)
    pool = await asyncpg.create_pool(url, min_size=connections, max_size=connections)
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker():
        nonlocal done
        async with pool.acquire() as conn:
            for event in events:
                if time.perf_counter() >= deadline:
                    return
                await conn.execute("INSERT INTO events (position, event_id, type, payload, "
                                   "recorded_at) VALUES ($1, $2, $3, $4, 0)", next(positions),
                                   event.event_id.encode(), event.type_code, event.payload)
                done += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(connections)))
        return done / (time.perf_counter() - started)
    finally:
        await pool.close()


def run(sizes: Sizes = FULL) -> list[Figure]:
    bodies = list(dataset.batches(sizes.batch_events, max(1, sizes.batch_events // 10), 1))
    shares = [bodies[n::REPLICAS] for n in range(REPLICAS)]
    per_replica = max(1, sizes.connections // REPLICAS)
    reports = [None] * REPLICAS
    with fresh_schema("single") as (_, url), replicas(url, REPLICAS) as servers:
        def drive(n):
            requests = [Request("POST", "/events", "application/json", b) for b in shares[n]]
            reports[n] = load(servers[n].port, requests, per_replica, sizes.seconds,
                              sizes.warmup)

        threads = [threading.Thread(target=drive, args=(n,)) for n in range(REPLICAS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        positions = [s.request("GET", "/health")[1]["position"] for s in servers]
    for report in reports:
        if set(report.statuses) != {"201"}:
            raise RuntimeError(f"single-event ingest failed: {report.statuses}")
    rate = sum(r.rate for r in reports)
    connections = min(sizes.connections, MAX_CEILING_CONNECTIONS)
    with fresh_schema("single_ceiling") as (_, url):
        ceiling = asyncio.run(commit_per_row_ceiling(bodies, url, connections, sizes.seconds))
    return [Figure(
        name="single-event ingest, PostgreSQL, 2 replicas",
        workload=f"one-event POSTs over {REPLICAS} replicas of one log, {per_replica} "
                 f"connections each, {sizes.seconds:g} s, durable acks",
        value=round(rate), unit="events/s", ceiling=round(ceiling),
        ceiling_what=f"asyncpg one-row INSERT + commit, {connections} connections, no lock",
        ratio=round(ratio(rate, ceiling), 3), target=f">= {TARGET_RATE:,} events/s",
        met=rate >= TARGET_RATE,
        extra={"p99_ms": round(max(r.p99_ms for r in reports), 1),
               "replica_positions_equal": str(len(set(positions)) == 1)},
    )]


if __name__ == "__main__":
    main_for(run)
