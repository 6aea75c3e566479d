"""Metrics questions over the request facts: `GET /events/metrics/query` on the 1M-event log
(and the 10M-event one when it is cached, see `python -m bench --big`), one request at a time
from this process, median of `RUNS`. Three questions a user asks first:

- one day of the 30 (`from`/`to`): the service's totals, tokens, cost and p95 latency;
- the same measures as the log was at its middle (`as_of_position`);
- the 20 users who cost the most over all 30 days (`group_by=user_id&sort=total_cost_usd`).

The server starts from a copy of the facts the replay figure built (a restart, not a rebuild).
The ceiling is `GET /health` on the same server and client: an answer with no work behind it.

    python -m bench.queries [--smoke]
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from bench import dataset
from bench.common import (FULL, Figure, Sizes, big_log, facts_service, main_for, median_ms,
                          ratio, scratch, timed_get)

RUNS = 20
TARGETS_MS = {1_000_000: 50.0, 10_000_000: 500.0}
MEASURES = "total_requests,total_tokens,total_cost_usd,duration_ms_p95"
HEADERS = {"x-internal-auth": "secret"}


def _iso(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us // 1_000_000))


def questions(events: int, sessions: int) -> dict[str, tuple[str, object]]:
    """name -> (path, check): `check(rows)` raises when an answer is not what the log holds."""
    day = dataset.BASE_US + 15 * 86_400_000_000
    month = dataset.BASE_US + dataset.DAYS * 86_400_000_000
    requests = events // 2
    users = min(20, max(1, sessions // dataset.SESSIONS_PER_USER))

    def one_day(rows):
        # Sessions start uniformly over 30 days: one day holds about a thirtieth of them.
        got = rows[0]["total_requests"]
        if not requests / 100 < got < requests / 10:
            raise RuntimeError(f"one day holds {got} of {requests} requests")

    def as_of(rows):
        got = rows[0]["total_requests"]
        if not 0 < got < requests * 0.6:
            raise RuntimeError(f"half the log holds {got} finished requests of {requests}")

    def top_users(rows):
        costs = [row["total_cost_usd"] for row in rows]
        if len(rows) != users or costs != sorted(costs, reverse=True) or not costs[-1] > 0:
            raise RuntimeError(f"top users: {rows[:3]}... ({len(rows)} rows)")

    q = "/events/metrics/query?"
    return {
        "one-day window": (f"{q}measures={MEASURES}&from={_iso(day)}"
                           f"&to={_iso(day + 86_400_000_000)}", one_day),
        "as-of mid-log": (f"{q}measures={MEASURES}&as_of_position={events // 2}", as_of),
        "top 20 users by cost, 30 days": (
            f"{q}group_by=user_id&measures=total_requests,total_cost_usd"
            f"&sort=total_cost_usd&limit=20&from={_iso(dataset.BASE_US)}&to={_iso(month)}",
            top_users),
    }


def ask_each(url: str, events: int, sessions: int) -> None:
    """One round of the questions, each answer checked."""
    for path, check in questions(events, sessions).values():
        _, body = timed_get(url + path, HEADERS)
        check(msgspec.json.decode(body)["rows"])


def measure(log: Path, db: Path, events: int, sessions: int, target_ms: float,
            runs: int) -> list[Figure]:
    figures = []
    with facts_service(log, db, f"queries-{events}") as server:
        ask_each(server.url, events, sessions)
        ceiling = median_ms(server.url + "/health", HEADERS, runs)
        for name, (path, _) in questions(events, sessions).items():
            value = median_ms(server.url + path, HEADERS, runs)
            figures.append(Figure(
                name=f"query: {name}, {events:,} events",
                workload=f"GET {path} on {events:,} events "
                         f"({sessions:,} sessions); median of {runs}",
                value=round(value, 2), unit="ms", ceiling=round(ceiling, 2),
                ceiling_what="GET /health on the same server and client",
                ratio=round(ratio(value, ceiling, higher_is_better=False), 3),
                target=f"p50 <= {target_ms:g} ms", met=value <= target_ms,
            ))
    return figures


def run(sizes: Sizes = FULL) -> list[Figure]:
    runs = RUNS if sizes is FULL else 3
    log = dataset.cached_log(sizes.events, sizes.sessions)
    copy = dataset.private_log(log, scratch())
    figures = measure(log, copy, sizes.events, sizes.sessions,
                      TARGETS_MS.get(sizes.events, 50.0), runs)
    big = big_log(sizes)
    if big is None:
        print(f"  (no {sizes.big_events:,}-event log cached: `python -m bench --big` builds it)",
              flush=True)
    else:
        copy = dataset.private_log(big, scratch())
        figures += measure(big, copy, sizes.big_events, sizes.big_sessions,
                           TARGETS_MS.get(sizes.big_events, 500.0), runs)
    return figures


if __name__ == "__main__":
    main_for(run)
