"""Metrics reads: `GET /events/metrics/session/{id}` for random sessions of the 100k-session
log, over 64 keep-alive connections, the server started from the replay figure's facts. The
ceiling is the same load against a bare aiohttp handler returning a fixed body of about the
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


def run(sizes: Sizes = FULL) -> list[Figure]:
    log = dataset.cached_log(sizes.events, sizes.sessions)
    db = dataset.private_log(log, scratch())
    rng = random.Random(3)
    reqs = [Request("GET", f"/events/metrics/session/{dataset.session_id(rng.randrange(sizes.sessions))}")
            for _ in range(PATHS)]
    with bare_server() as port:
        bare = load(port, reqs, sizes.connections, sizes.seconds, sizes.warmup, cycle=True)
    with facts_service(log, db, "reads") as server:
        report = load(server.port, reqs, sizes.connections, sizes.seconds, sizes.warmup,
                      cycle=True)
    # Answers other than 200 (503: a question stopped at LLM_METRICS_QUERY_TIMEOUT) are shown
    # beside the figure and fail it, rather than hiding the figure behind a failed script.
    failed = sum(n for status, n in report.statuses.items() if status != "200")
    if "200" not in report.statuses:
        raise RuntimeError(f"metrics reads: {report.statuses}")
    r = ratio(report.rate, bare.rate)
    return [Figure(
        name="metrics reads",
        workload=f"GET /events/metrics/session/{{id}}, {sizes.sessions:,} sessions, "
                 f"{sizes.connections} connections",
        value=round(report.rate), unit="requests/s", ceiling=round(bare.rate),
        ceiling_what="bare aiohttp handler returning a fixed body, same load generator",
        ratio=round(r, 3), target=f">= {TARGET_RATIO} x ceiling, p99 <= {TARGET_P99_MS:g} ms",
        met=r >= TARGET_RATIO and report.p99_ms <= TARGET_P99_MS and not failed,
        extra={"p99_ms": round(report.p99_ms, 1), "p50_ms": round(report.p50_ms, 1),
               "bare_p99_ms": round(bare.p99_ms, 1),
               **({"not_200": str(report.statuses)} if failed else {})},
    )]


if __name__ == "__main__":
    main_for(run)
