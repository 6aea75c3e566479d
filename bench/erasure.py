"""What an erasure costs on the 1M-event benchmark log (SQLite) and its request facts: one
user's requests, one session's, and a retention sweep of the oldest tenth; each split into
finding the positions (facts), the log transaction with its scrub (secure_delete, WAL
truncate) and the facts apply with the facts file rewrite, which is timed on its own too.

    python -m bench.erasure [--smoke]
"""

from __future__ import annotations

import asyncio
import time

from bench import dataset
from bench.common import FULL, main_for, scratch
from events.records import erasure_key
from events.sqlite_store import SQLiteStore
from projections.engine import Engine
from projections.facts import Facts
from projections.prices import default_prices
from projections.query import positions_of
from projections.replay import catch_up


async def _erase(store, facts, scope, **which) -> dict:
    t0 = time.perf_counter()
    positions = await positions_of(facts, **which)
    t1 = time.perf_counter()
    erasure = await store.erase(positions, scope, erasure_key(scope, str(which)))
    t2 = time.perf_counter()
    await facts.apply_rows([(p, e.record) for p, e in erasure.rows])
    t3 = time.perf_counter()
    return {"what": f"{scope} {which}", "events": erasure.count,
            "find_s": round(t1 - t0, 3), "log_s": round(t2 - t1, 3),
            "facts_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3)}


async def _run(sizes) -> list[dict]:
    folder = scratch()
    source = dataset.cached_log(sizes.events, sizes.sessions)
    log = dataset.copy_log(source, folder / "erase.db")
    if dataset.facts_path(source).exists():  # else built below, from the whole log
        dataset.copy_facts(source, folder / "erase.facts.duckdb")
    store = await SQLiteStore.open(log)
    await store.migrate()
    engine = Engine.open(folder / "erase.facts.duckdb")
    facts = await Facts.open(engine, default_prices())
    await catch_up(store, facts)
    out = []
    try:
        t = time.perf_counter()
        await engine.compact()
        out.append({"what": "facts file rewrite alone", "events": sizes.events,
                    "total_s": round(time.perf_counter() - t, 3)})
        out.append(await _erase(store, facts, "user",
                                user_id=dataset.user_id(3, sizes.sessions)))
        out.append(await _erase(store, facts, "session", session_id=dataset.session_id(5)))
        low, high = (await engine.read("SELECT min(end_us), max(end_us) FROM requests"))[0]
        out.append(await _erase(store, facts, "retention",
                                older_than_us=low + (high - low) // 10))
    finally:
        engine.close()
        await store.close()
    return out


def run(sizes=FULL) -> list[dict]:
    return asyncio.run(_run(sizes))


if __name__ == "__main__":
    main_for(run)
