"""Full replay: the whole log through the real projections (`ReadModels`, `replay`) from the
real store, against the ceiling on the same file: plain `sqlite3` SELECT + one msgspec
tagged-union decoder + a fold into a dict per session.

    python -m bench.replay [--smoke]
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import msgspec

from bench import dataset
from bench.common import FULL, Figure, Sizes, main_for, ratio
from events.records import Completed, Record
from events.sqlite_store import SQLiteStore
from projections.replay import PAGE, ReadModels, replay

RUNS = 2
TARGET_RATE = 500_000
TARGET_RATIO = 0.5


async def replay_service(path: Path) -> tuple[ReadModels, float]:
    """Replay the log at `path` the way startup does; (models, events/s)."""
    store = await SQLiteStore.open(path)
    try:
        models = ReadModels()
        report = await replay(store, models)
        return models, report.rate
    finally:
        await store.close()


def fold_ceiling(path: Path) -> tuple[dict, int]:
    """The ceiling: read every payload, decode it, fold it into a dict per session."""
    decode = msgspec.msgpack.Decoder(Record).decode
    sessions: dict[str, list[int]] = {}
    count = 0
    conn = sqlite3.connect(path)
    try:
        cur = conn.execute("SELECT payload FROM events ORDER BY position")
        while rows := cur.fetchmany(PAGE):
            for (payload,) in rows:
                record = decode(payload)
                session = sessions.get(record.session_id)
                if session is None:
                    session = sessions[record.session_id] = [0, 0]
                session[0] += 1
                if type(record) is Completed:
                    session[1] += record.total_tokens
            count += len(rows)
    finally:
        conn.close()
    return sessions, count


def ceiling_rate(path: Path) -> float:
    started = time.perf_counter()
    _, count = fold_ceiling(path)
    return count / (time.perf_counter() - started)


def run(sizes: Sizes = FULL) -> list[Figure]:
    path = dataset.cached_log(sizes.events, sizes.sessions)
    best, best_ceiling = 0.0, 0.0
    for _ in range(RUNS):  # interleaved, best of each: both see the same neighbours' noise
        best_ceiling = max(best_ceiling, ceiling_rate(path))
        models, rate = asyncio.run(replay_service(path))
        best = max(best, rate)
    assert models.position == sizes.events, "replay did not reach the end of the log"
    r = ratio(best, best_ceiling)
    return [Figure(
        name="full replay",
        workload=f"{sizes.events:,} events, {sizes.sessions:,} sessions, real projections",
        value=round(best), unit="events/s", ceiling=round(best_ceiling),
        ceiling_what="sqlite3 SELECT + msgspec decode + dict fold",
        ratio=round(r, 3), target=f">= {TARGET_RATE:,} events/s and >= {TARGET_RATIO} x ceiling",
        met=best >= TARGET_RATE and r >= TARGET_RATIO,
    )]


if __name__ == "__main__":
    main_for(run)
