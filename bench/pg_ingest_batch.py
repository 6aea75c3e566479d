"""Batch ingest into PostgreSQL over HTTP: 1000-event JSON arrays from 4 concurrent clients
spread over 2 replicas of one log (`LLM_METRICS_DB=postgresql://...`), each answered after its
commit. The ceiling is plain asyncpg inserting the same rows into the same table from 4
connections at once (one `INSERT ... SELECT unnest(...)` and one commit per batch, no duplicate
checks, no slots) in this process.

    python -m bench.pg_ingest_batch [--smoke]
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import asyncpg

from bench.common import FULL, Figure, Sizes, load, main_for, ratio
from bench.ingest_batch import batch_bodies
from bench.loadgen import Request
from bench.postgres import fresh_schema, migrated, replicas
from service.ingest import parse_body

REPLICAS = 2
# Issue 14: at least 0.6x the bare insert of the same rows.
CEILING_SHARE = 0.6


async def insert_ceiling(bodies: list[bytes], url: str, clients: int) -> float:
    """Rows/s of inserting the bodies' rows, one statement and one commit per body, from
    `clients` connections at once."""
    batches = iter([parse_body(b, "application/json") for b in bodies])
    await (await migrated(url)).close()
    positions = itertools.count(1)
    pool = await asyncpg.create_pool(url, min_size=clients, max_size=clients)
    done = 0

    async def client():
        nonlocal done
        async with pool.acquire() as conn:
            for events in batches:
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO events (position, event_id, type, payload, recorded_at) "
                        "SELECT p, e, t, b, 0 FROM unnest($1::bigint[], $2::bytea[], "
                        "$3::smallint[], $4::bytea[]) AS u(p, e, t, b)",
                        [next(positions) for _ in events],
                        [e.event_id.encode() for e in events], [e.type_code for e in events],
                        [e.payload for e in events])
                done += len(events)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return done / (time.perf_counter() - started)
    finally:
        await pool.close()


async def stored(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()


def run(sizes: Sizes = FULL) -> list[Figure]:
    bodies = batch_bodies(sizes)
    reports = [None] * REPLICAS
    per_replica = max(1, sizes.batch_clients // REPLICAS)
    with fresh_schema("batch") as (_, url), replicas(url, REPLICAS) as servers:
        def drive(n):
            requests = [Request("POST", "/events", "application/json", body)
                        for body in bodies[n::REPLICAS]]
            reports[n] = load(servers[n].port, requests, per_replica)

        started = time.perf_counter()
        threads = [threading.Thread(target=drive, args=(n,)) for n in range(REPLICAS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        count = asyncio.run(stored(url))
    statuses = [r.statuses for r in reports]
    if any(set(s) != {"201"} for s in statuses) or count != sizes.batch_events:
        raise RuntimeError(f"batch ingest failed: {statuses}, {count} events stored")
    rate = sizes.batch_events / seconds
    with fresh_schema("batch_ceiling") as (_, url):
        ceiling = asyncio.run(insert_ceiling(bodies, url, sizes.batch_clients))
    return [Figure(
        name="batch ingest, PostgreSQL, 2 replicas",
        workload=f"{sizes.batch_events:,} events as {sizes.batch_size}-event JSON batches over "
                 f"HTTP, {sizes.batch_clients} clients spread over {REPLICAS} replicas, "
                 "durable acks",
        value=round(rate), unit="events/s", ceiling=round(ceiling),
        ceiling_what=f"asyncpg INSERT ... unnest of the same rows, a commit per batch, "
                     f"{sizes.batch_clients} connections",
        ratio=round(ratio(rate, ceiling), 3), target=f">= {CEILING_SHARE:g}x the ceiling",
        met=rate >= CEILING_SHARE * ceiling,
        extra={"p99_ms": round(max(r.p99_ms for r in reports), 1)},
    )]


if __name__ == "__main__":
    main_for(run)
