"""Replication lag between replicas of one PostgreSQL log, under load: while both replicas take
one-event POSTs, a probe posts an event to replica A and, as soon as A acknowledges it, polls
replica B's `/health` until B's position reaches it. The lag is acknowledgement on A to
visibility on B. The ceiling: the bare LISTEN/NOTIFY round trip (a committed `pg_notify` on one
asyncpg connection until the listener on another receives it), in this process.

    python -m bench.pg_lag [--smoke]
"""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg

from bench import dataset
from bench.common import FULL, Figure, Sizes, load, main_for, ratio
from bench.loadgen import Request
from bench.postgres import fresh_schema, replicas
from tests import factories

TARGET_P99_MS = 100.0
# The background load: a moderate share of what single-event ingest can take.
LOAD_CONNECTIONS = 8
NOTIFY_SAMPLES = 500


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def probe(a, b, seconds: float) -> list[float]:
    """Lags in ms of events posted to `a` until `b` has applied them, for `seconds`."""
    lags: list[float] = []
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        status, body = a.request("POST", "/events", factories.started(f"probe-{n}", "r"))
        if status != 201:
            raise RuntimeError(f"probe post failed: {status} {body}")
        acknowledged = time.perf_counter()
        while b.request("GET", "/health")[1]["position"] < body["last_position"]:
            if time.perf_counter() - acknowledged > 10:
                raise RuntimeError("replica b did not see a probe event in 10 s")
        lags.append((time.perf_counter() - acknowledged) * 1000)
        n += 1
    return lags


async def notify_ceiling(url: str, samples: int) -> float:
    """p99 in ms of a committed NOTIFY reaching a listener on another connection."""
    sender, listener = await asyncpg.connect(url), await asyncpg.connect(url)
    received: asyncio.Queue[float] = asyncio.Queue()
    await listener.add_listener("bench_lag", lambda *_: received.put_nowait(time.perf_counter()))
    lags = []
    try:
        for _ in range(samples):
            sent = time.perf_counter()
            await sender.execute("SELECT pg_notify('bench_lag', '')")
            lags.append((await received.get() - sent) * 1000)
    finally:
        await sender.close()
        await listener.close()
    return p99(lags)


def run(sizes: Sizes = FULL) -> list[Figure]:
    bodies = list(dataset.batches(sizes.batch_events, max(1, sizes.batch_events // 10), 1))
    seconds = sizes.seconds + sizes.warmup
    with fresh_schema("lag") as (_, url), replicas(url, 2) as (a, b):
        def background(server, share):
            requests = [Request("POST", "/events", "application/json", body) for body in share]
            load(server.port, requests, LOAD_CONNECTIONS // 2, seconds)

        threads = [threading.Thread(target=background, args=(server, bodies[n::2]))
                   for n, server in enumerate((a, b))]
        for t in threads:
            t.start()
        time.sleep(sizes.warmup)
        lags = probe(a, b, sizes.seconds)
        for t in threads:
            t.join()
        ceiling = asyncio.run(notify_ceiling(url, max(20, min(NOTIFY_SAMPLES, len(lags) * 5))))
    value = p99(lags)
    return [Figure(
        name="replication lag p99, PostgreSQL",
        workload=f"probe events acknowledged by replica A until visible on replica B, while "
                 f"both take one-event POSTs on {LOAD_CONNECTIONS} connections",
        value=round(value, 1), unit="ms", ceiling=round(ceiling, 2),
        ceiling_what="bare LISTEN/NOTIFY round trip p99 (asyncpg, same server)",
        ratio=round(ratio(value, ceiling, higher_is_better=False), 3),
        target=f"<= {TARGET_P99_MS:g} ms", met=value <= TARGET_P99_MS,
        extra={"samples": len(lags), "p50_ms": round(sorted(lags)[len(lags) // 2], 1),
               "max_ms": round(max(lags), 1)},
    )]


if __name__ == "__main__":
    main_for(run)
