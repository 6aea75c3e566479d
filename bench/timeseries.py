"""Time series: `GET /events/metrics/timeseries?bucket=1h` over the 30 days of the 1M-event
log (720 points), one request at a time from this process, median of many. The ceiling is
`GET /health` on the same server, same client: what an answer costs with no work behind it.

    python -m bench.timeseries [--smoke]
"""

from __future__ import annotations

import statistics
import time
import urllib.request

from bench import dataset
from bench.common import FULL, Figure, Sizes, main_for, ratio, scratch, service
from bench.replay import service_replay

TARGET_MS = 100.0
DAYS = 30
RUNS = 30


def _iso(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us // 1_000_000))


def _median_ms(url: str, headers: dict, runs: int) -> float:
    times = []
    for _ in range(runs + 2):
        request = urllib.request.Request(url, headers=headers)
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as r:
            r.read()
            assert r.status == 200
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[2:])  # the first two warm caches up


def run(sizes: Sizes = FULL) -> list[Figure]:
    log = dataset.cached_log(sizes.events, sizes.sessions)
    work = scratch()
    db = dataset.copy_log(log, work / "timeseries.db")
    snapshot = work / "timeseries.snapshot"
    snapshot.write_bytes(service_replay(log)[1])
    start, end = dataset.BASE_US, dataset.BASE_US + DAYS * 86_400_000_000
    runs = RUNS if sizes is FULL else 3
    with service(db, "timeseries", LLM_METRICS_SNAPSHOT=str(snapshot),
                 LLM_METRICS_SNAPSHOT_EVERY="0") as server:
        headers = {"x-internal-auth": "secret"}
        path = f"/events/metrics/timeseries?bucket=1h&from={_iso(start)}&to={_iso(end)}"
        value = _median_ms(server.url + path, headers, runs)
        ceiling = _median_ms(server.url + "/health", headers, runs)
    for path in work.glob("timeseries.*"):
        path.unlink()
    return [Figure(
        name="time series",
        workload=f"GET /events/metrics/timeseries?bucket=1h over {DAYS} days ({DAYS * 24} points), "
                 f"{sizes.events:,}-event log; median of {runs}",
        value=round(value, 2), unit="ms", ceiling=round(ceiling, 2),
        ceiling_what="GET /health on the same server and client",
        ratio=round(ratio(value, ceiling, higher_is_better=False), 3),
        target=f"<= {TARGET_MS:g} ms", met=value <= TARGET_MS,
    )]


if __name__ == "__main__":
    main_for(run)
