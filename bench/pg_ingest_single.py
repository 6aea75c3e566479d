"""Single-event ingest into one PostgreSQL log through 1, 2 and 3 replicas: 64 connections in
all, spread evenly over the replicas, one-event POSTs, every answer after its commit (and after
the replica applied it). Appends from the replicas run concurrently (no lock: the commit-order
horizon, docs/scaling.md), so more replicas should commit more. The ceiling is plain asyncpg:
connections each inserting one row per commit, with no duplicate checks, in this process.

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

REPLICAS = (1, 2, 3)
# Issue 14: 2 replicas >= 1.6x one and >= 0.6x the ceiling; 3 replicas >= 2.1x one.
SCALE_TARGETS = {2: 1.6, 3: 2.1}
CEILING_SHARE = 0.6
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


def ingest(bodies: list[bytes], count: int, sizes: Sizes) -> tuple[float, float, bool]:
    """(events/s, worst p99 ms, whether every replica ended at the same position) of the
    one-event POSTs over `count` replicas of a fresh log."""
    shares = [bodies[n::count] for n in range(count)]
    per_replica = max(1, sizes.connections // count)
    reports = [None] * count
    with fresh_schema(f"single{count}") as (_, url), replicas(url, count) as servers:
        def drive(n):
            requests = [Request("POST", "/events", "application/json", b) for b in shares[n]]
            reports[n] = load(servers[n].port, requests, per_replica, sizes.seconds,
                              sizes.warmup)

        threads = [threading.Thread(target=drive, args=(n,)) for n in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 10
        while len(positions := {s.request("GET", "/health")[1]["position"]
                                for s in servers}) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    for report in reports:
        if set(report.statuses) != {"201"}:
            raise RuntimeError(f"single-event ingest failed: {report.statuses}")
    return (sum(r.rate for r in reports), max(r.p99_ms for r in reports), len(positions) == 1)


def run(sizes: Sizes = FULL) -> list[Figure]:
    bodies = list(dataset.batches(sizes.batch_events, max(1, sizes.batch_events // 10), 1))
    measured = {count: ingest(bodies, count, sizes) for count in REPLICAS}
    connections = min(sizes.connections, MAX_CEILING_CONNECTIONS)
    with fresh_schema("single_ceiling") as (_, url):
        ceiling = asyncio.run(commit_per_row_ceiling(bodies, url, connections, sizes.seconds))
    one = measured[1][0]
    figures = []
    for count, (rate, p99_ms, equal) in measured.items():
        scale = rate / one if one else 0.0
        if count == 1:
            target, met = "(the base of the scaling targets)", True
        else:
            target = f">= {SCALE_TARGETS[count]:g}x one replica"
            met = scale >= SCALE_TARGETS[count]
            if count == 2:
                target += f" and >= {CEILING_SHARE:g}x the ceiling"
                met = met and rate >= CEILING_SHARE * ceiling
        figures.append(Figure(
            name=f"single-event ingest, PostgreSQL, {count} replica{'s' * (count > 1)}",
            workload=f"one-event POSTs, {sizes.connections} connections spread over {count} "
                     f"replica{'s' * (count > 1)} of one log, {sizes.seconds:g} s, durable acks",
            value=round(rate), unit="events/s", ceiling=round(ceiling),
            ceiling_what=f"asyncpg one-row INSERT + commit, {connections} connections",
            ratio=round(ratio(rate, ceiling), 3), target=target, met=met,
            extra={"p99_ms": round(p99_ms, 1), "x_one_replica": round(scale, 2),
                   "replica_positions_equal": str(equal)},
        ))
    return figures


if __name__ == "__main__":
    main_for(run)
