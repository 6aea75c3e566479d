"""Single-event ingest: 64 keep-alive connections, each posting one event per request and
waiting for its durable ack, into a fresh log. The ceiling is the same load against a bare
aiohttp POST handler (`bench.bare_server`) measured in the same run. Beside it, the rate of
durable one-row commits plain `sqlite3` gets from this disk right now: what group commit is for.

    python -m bench.ingest_single [--smoke]
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import msgspec

from bench import dataset
from bench.common import (FULL, Figure, Sizes, bare_server, load, main_for, ratio, scratch,
                          service)
from bench.loadgen import Request

TARGET_RATE = 8_000
TARGET_P99_MS = 25.0
# More events than the service can take in the measured time: each must be posted once.
MAX_RATE = 25_000


def requests(sizes: Sizes) -> list[Request]:
    count = int(MAX_RATE * (sizes.seconds + sizes.warmup))
    encode = msgspec.json.encode
    return [Request("POST", "/events", "application/json", encode(event))
            for event in dataset.wire_events(count, max(1, count // 10))]


def durable_commits_per_s(path: Path, seconds: float) -> float:
    """One-row transactions committed one by one (WAL, `synchronous=FULL`): what the disk
    allows without group commit, measured in the same run."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (x INTEGER)")
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?)", (count,))
            conn.execute("COMMIT")
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        conn.close()


def run(sizes: Sizes = FULL) -> list[Figure]:
    work = scratch()
    db = work / "ingest-single.db"
    for leftover in work.glob(db.name + "*"):
        leftover.unlink()
    reqs = requests(sizes)
    with bare_server() as port:
        bare = load(port, reqs, sizes.connections, sizes.seconds, sizes.warmup)
    with service(db, "ingest_single", LLM_METRICS_SNAPSHOT_EVERY="0") as server:
        report = load(server.port, reqs, sizes.connections, sizes.seconds, sizes.warmup)
    commits = durable_commits_per_s(work / "commits.db", min(sizes.seconds, 2.0))
    for leftover in [*work.glob(db.name + "*"), *work.glob("commits.db*")]:
        leftover.unlink()
    if set(report.statuses) != {"201"} or report.requests >= len(reqs) * 0.95:
        raise RuntimeError(f"single-event ingest: {report.statuses} for {report.requests} "
                           f"requests of {len(reqs)} prepared (raise MAX_RATE?)")
    r = ratio(report.rate, bare.rate)
    return [Figure(
        name="single-event ingest",
        workload=f"{sizes.connections} connections, one event per POST, durable acks",
        value=round(report.rate), unit="events/s", ceiling=round(bare.rate),
        ceiling_what="bare aiohttp POST handler, same load generator",
        ratio=round(r, 3), target=f">= {TARGET_RATE:,} events/s, p99 <= {TARGET_P99_MS:g} ms",
        met=report.rate >= TARGET_RATE and report.p99_ms <= TARGET_P99_MS,
        extra={"p99_ms": round(report.p99_ms, 1), "p50_ms": round(report.p50_ms, 1),
               "bare_p99_ms": round(bare.p99_ms, 1),
               "sqlite_durable_commits_per_s": round(commits)},
    )]


if __name__ == "__main__":
    main_for(run)
