"""Memory: resident set size of the server process after startup from persisted facts and one
round of the query figures' questions, on the 1M-event log (and the 10M-event one when it is
cached). The facts live in DuckDB, whose cache and query memory is capped by
`LLM_METRICS_FACTS_MEMORY` (default 128MB); the rest is the interpreter, the imports and what
requests make. The ceiling is a bare process with duckdb and aiohttp imported.

    python -m bench.memory [--smoke]
"""

from __future__ import annotations

import sys

import msgspec

from bench import dataset
from bench.common import (FULL, Figure, Sizes, big_log, facts_service, main_for, process_rss_mb,
                          python, ratio, rss_mb, scratch)
from bench.queries import ask_each

TARGETS_MB = {1_000_000: 150.0, 10_000_000: 400.0}


def ceiling_child() -> float:
    import aiohttp.web  # noqa: F401  (what the server imports before it holds anything)
    import duckdb  # noqa: F401

    return round(rss_mb(), 1)


def measure(log, events: int, sessions: int, ceiling: float, target_mb: float) -> Figure:
    db = dataset.private_log(log, scratch())
    with facts_service(log, db, f"memory-{events}") as server:
        ask_each(server.url, events, sessions)
        value = round(process_rss_mb(server.proc.pid), 1)
    return Figure(
        name=f"memory, {events:,} events",
        workload=f"server RSS after startup from the facts of {events:,} events "
                 f"({sessions:,} sessions) and one round of the query figures",
        value=value, unit="MB", ceiling=ceiling,
        ceiling_what="a bare process with duckdb and aiohttp imported",
        ratio=round(ratio(value, ceiling, higher_is_better=False), 3),
        target=f"<= {target_mb:g} MB (DuckDB capped by LLM_METRICS_FACTS_MEMORY, 128MB)",
        met=value <= target_mb,
    )


def run(sizes: Sizes = FULL) -> list[Figure]:
    ceiling = msgspec.json.decode(python("-m", "bench.memory", "--child"))
    log = dataset.cached_log(sizes.events, sizes.sessions)
    figures = [measure(log, sizes.events, sizes.sessions, ceiling,
                       TARGETS_MB.get(sizes.events, 150.0))]
    big = big_log(sizes)
    if big is not None:
        figures.append(measure(big, sizes.big_events, sizes.big_sessions, ceiling,
                               TARGETS_MB.get(sizes.big_events, 400.0)))
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.stdout.buffer.write(msgspec.json.encode(ceiling_child()))
    else:
        main_for(run)
