"""Metrics reads: `GET /events/metrics/session/{id}` over 64 keep-alive connections, the server
started from the replay figure's facts, two ways:

- cold: random sessions of the 100k-session log, nearly every one asked for the first time, so
  each is a question to the engine;
- repeated: a working set of `WORKING_SET` sessions read over and over, as dashboards poll
  (each read once before the measurement), answered from the kept answers (`projections.memo`).

The ceiling is the same load against a bare aiohttp handler returning a fixed body of about the
same size (`bench.bare_server`), same run.

    python -m bench.reads [--smoke]
"""

from __future__ import annotations

import random

from bench import dataset
from bench.common import (FULL, Figure, Sizes, bare_server, facts_service, load, main_for, ratio,
                          scratch)
from bench.loadgen import Request

TARGET_RATIO = 0.6
TARGET_P99_MS = 10.0
PATHS = 20_000
WORKING_SET = 200


def _session_reads(ids) -> list[Request]:
    return [Request("GET", f"/events/metrics/session/{dataset.session_id(i)}") for i in ids]


def run(sizes: Sizes = FULL) -> list[Figure]:
    log = dataset.cached_log(sizes.events, sizes.sessions)
    db = dataset.private_log(log, scratch())
    rng = random.Random(3)
    cold = _session_reads(rng.randrange(sizes.sessions) for _ in range(PATHS))
    # (Fewer in the smoke run: each is one question to the engine before the measurement.)
    working = _session_reads(rng.sample(range(sizes.sessions),
                                        min(WORKING_SET, 4 * sizes.connections)))
    with bare_server() as port:
        bare = load(port, cold, sizes.connections, sizes.seconds, sizes.warmup, cycle=True)
    with facts_service(log, db, "reads") as server:
        cold_report = load(server.port, cold, sizes.connections, sizes.seconds, sizes.warmup,
                           cycle=True)
        load(server.port, working, sizes.connections)  # each read once: a dashboard's first look
        repeated = load(server.port, working, sizes.connections, sizes.seconds, sizes.warmup,
                        cycle=True)
    return [_figure("metrics reads, cold", f"{sizes.sessions:,} sessions at random",
                    cold_report, bare, sizes),
            _figure("metrics reads, repeated",
                    f"a working set of {len(working)} sessions read over and over",
                    repeated, bare, sizes)]


def _figure(name: str, which: str, report, bare, sizes: Sizes) -> Figure:
    # Answers other than 200 (503: a question stopped at LLM_METRICS_QUERY_TIMEOUT) are shown
    # beside the figure and fail it, rather than hiding the figure behind a failed script.
    failed = sum(n for status, n in report.statuses.items() if status != "200")
    if "200" not in report.statuses:
        raise RuntimeError(f"{name}: {report.statuses}")
    r = ratio(report.rate, bare.rate)
    return Figure(
        name=name,
        workload=f"GET /events/metrics/session/{{id}}, {which}, {sizes.connections} "
                 "connections",
        value=round(report.rate), unit="requests/s", ceiling=round(bare.rate),
        ceiling_what="bare aiohttp handler returning a fixed body, same load generator",
        ratio=round(r, 3), target=f">= {TARGET_RATIO} x ceiling, p99 <= {TARGET_P99_MS:g} ms",
        met=r >= TARGET_RATIO and report.p99_ms <= TARGET_P99_MS and not failed,
        extra={"p99_ms": round(report.p99_ms, 1), "p50_ms": round(report.p50_ms, 1),
               "bare_p99_ms": round(bare.p99_ms, 1),
               **({"not_200": str(report.statuses)} if failed else {})},
    )


if __name__ == "__main__":
    main_for(run)
