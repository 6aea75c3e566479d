"""Batch ingest into PostgreSQL over HTTP: 1000-event JSON arrays from 4 concurrent clients to
one replica (`LLM_METRICS_DB=postgresql://...`), each answered after its commit. The ceiling is
plain asyncpg inserting the same rows into the same table (one `INSERT ... SELECT unnest(...)`
and one commit per batch, no lock, no duplicate checks) in this process.

    python -m bench.pg_ingest_batch [--smoke]
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from bench.common import FULL, Figure, Sizes, main_for, ratio
from bench.ingest_batch import batch_bodies, post_batches
from bench.postgres import fresh_schema, migrated, replicas
from service.ingest import parse_body

# A shared log pays network round trips and a lock the SQLite file does not.
TARGET_RATE = 50_000


async def insert_ceiling(bodies: list[bytes], url: str) -> float:
    """Rows/s of inserting the bodies' rows with one statement and one commit per body."""
    batches = [parse_body(b, "application/json") for b in bodies]
    await (await migrated(url)).close()
    conn = await asyncpg.connect(url)
    try:
        position = 0
        started = time.perf_counter()
        for events in batches:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO events (position, event_id, type, payload, recorded_at) "
                    "SELECT p, e, t, b, 0 FROM unnest($1::bigint[], $2::bytea[], "
                    "$3::smallint[], $4::bytea[]) AS u(p, e, t, b)",
                    list(range(position + 1, position + 1 + len(events))),
                    [e.event_id.encode() for e in events], [e.type_code for e in events],
                    [e.payload for e in events])
            position += len(events)
        return position / (time.perf_counter() - started)
    finally:
        await conn.close()


def run(sizes: Sizes = FULL) -> list[Figure]:
    bodies = batch_bodies(sizes)
    with fresh_schema("batch") as (_, url), replicas(url, 1) as [server]:
        rate, report = post_batches(server, bodies, sizes)
    with fresh_schema("batch_ceiling") as (_, url):
        ceiling = asyncio.run(insert_ceiling(bodies, url))
    return [Figure(
        name="batch ingest, PostgreSQL",
        workload=f"{sizes.batch_events:,} events as {sizes.batch_size}-event JSON batches over "
                 f"HTTP to one replica, {sizes.batch_clients} clients, durable acks",
        value=round(rate), unit="events/s", ceiling=round(ceiling),
        ceiling_what="asyncpg INSERT ... unnest of the same rows, a commit per batch",
        ratio=round(ratio(rate, ceiling), 3), target=f">= {TARGET_RATE:,} events/s",
        met=rate >= TARGET_RATE,
        extra={"p99_ms": round(report.p99_ms, 1)},
    )]


if __name__ == "__main__":
    main_for(run)
