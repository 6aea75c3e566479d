"""What each stage of batch ingest costs per event, each timed alone in this process (no HTTP,
no other thread): where the CPU of `bench.ingest_batch` goes (docs/ingest-performance.md).

    python -m bench.stages [--events 40000]

The bench's 1000-event bodies go through `parse_body`, then `SQLiteStore.append` four bodies
a group (as four clients make), then `Facts.apply_rows` 4000 events an apply, on files in the
scratch folder. Beside them, `executemany` of the same rows (the batch ceiling's work).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench import dataset
from bench.common import scratch
from bench.ingest_batch import executemany_ceiling
from events.sqlite_store import SQLiteStore
from projections.engine import Engine
from projections.facts import Facts
from projections.prices import default_prices
from service.ingest import parse_body


async def _timed(events: int) -> dict[str, float]:
    bodies = list(dataset.batches(events, max(1, events // 10), 1000))
    work = scratch()
    for leftover in work.glob("stages*"):
        leftover.unlink()
    started = time.perf_counter()
    batches = [parse_body(body, "application/json") for body in bodies]
    parsed = time.perf_counter() - started
    store = await SQLiteStore.open(work / "stages.db")
    await store.migrate()
    started = time.perf_counter()
    results = []
    for i in range(0, len(batches), 4):
        results += await store.append(batches[i:i + 4])
    appended = time.perf_counter() - started
    await store.close()
    rows = [(position, event.record) for result in results for position, event in result.rows]
    engine = Engine.open(work / "stages.duckdb", memory_limit="128MB")
    try:
        facts = await Facts.open(engine, default_prices())
        started = time.perf_counter()
        for i in range(0, len(rows), 4000):
            await facts.apply_rows(rows[i:i + 4000])
        applied = time.perf_counter() - started
    finally:
        engine.close()
    per_event = 1e6 / len(rows)
    return {"parse_body": parsed * per_event, "SQLiteStore.append": appended * per_event,
            "Facts.apply_rows": applied * per_event}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    args = parser.parse_args()
    stages = asyncio.run(_timed(args.events))
    bodies = list(dataset.batches(args.events, max(1, args.events // 10), 1000))
    stages["executemany (ceiling)"] = 1e6 / executemany_ceiling(bodies,
                                                                 scratch() / "stages-ceiling.db")
    for leftover in scratch().glob("stages*"):
        leftover.unlink()
    for stage, us in stages.items():
        print(f"{stage:24s} {us:6.2f} us per event")


if __name__ == "__main__":
    main()
