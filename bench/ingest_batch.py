"""Batch ingest over HTTP: 1000-event JSON arrays from 4 concurrent clients, each answered
after its durable commit, into a fresh log. The ceiling is plain `sqlite3` `executemany` of the
same rows (same schema, WAL, `synchronous=FULL`, one commit per batch) in this process.

    python -m bench.ingest_batch [--smoke]
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

from bench import dataset
from bench.common import FULL, Figure, Sizes, load, main_for, ratio, scratch, service
from bench.loadgen import Request
from events.sqlite_store import SQLiteStore
from service.ingest import parse_body

TARGET_RATE = 150_000


async def _fresh_log(path) -> None:
    store = await SQLiteStore.open(path)
    await store.migrate()
    await store.close()


def executemany_ceiling(bodies: list[bytes], path) -> float:
    """Rows/s of inserting the bodies' rows with `executemany`, one durable commit per body."""
    batches = [[(e.event_id, e.type_code, e.payload, 0) for e in parse_body(b, "application/json")]
               for b in bodies]
    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    asyncio.run(_fresh_log(path))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    started = time.perf_counter()
    for rows in batches:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events (event_id, type, payload, recorded_at) "
                         "VALUES (?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return sum(map(len, batches)) / elapsed


def batch_bodies(sizes: Sizes) -> list[bytes]:
    """The workload: `batch_events` events as JSON arrays of `batch_size`."""
    return list(dataset.batches(sizes.batch_events, max(1, sizes.batch_events // 10),
                                sizes.batch_size))


def post_batches(server, bodies: list[bytes], sizes: Sizes):
    """Post every body with `batch_clients` concurrent clients; (events/s, the load report).
    Fails unless every post was acknowledged and the log holds every event."""
    requests = [Request("POST", "/events", "application/json", body) for body in bodies]
    report = load(server.port, requests, sizes.batch_clients)
    _, health = server.request("GET", "/health")
    if report.statuses != {"201": len(bodies)} or health["position"] != sizes.batch_events:
        raise RuntimeError(f"batch ingest failed: {report.statuses}, {health}")
    return sizes.batch_events / report.seconds, report


def run(sizes: Sizes = FULL) -> list[Figure]:
    bodies = batch_bodies(sizes)
    work = scratch()
    db = work / "ingest-batch.db"
    for leftover in work.glob(db.name + "*"):
        leftover.unlink()
    with service(db, "ingest_batch", LLM_METRICS_SNAPSHOT_EVERY="0") as server:
        rate, report = post_batches(server, bodies, sizes)
    ceiling = executemany_ceiling(bodies, work / "ingest-batch-ceiling.db")
    for leftover in work.glob("ingest-batch*"):
        leftover.unlink()
    return [Figure(
        name="batch ingest",
        workload=f"{sizes.batch_events:,} events as {sizes.batch_size}-event JSON batches over "
                 f"HTTP, {sizes.batch_clients} clients, durable acks",
        value=round(rate), unit="events/s", ceiling=round(ceiling),
        ceiling_what="sqlite3 executemany of the same rows, a commit per batch",
        ratio=round(ratio(rate, ceiling), 3), target=f">= {TARGET_RATE:,} events/s",
        met=rate >= TARGET_RATE,
        extra={"p99_ms": round(report.p99_ms, 1)},
    )]


if __name__ == "__main__":
    main_for(run)
