"""Startup: `make run` until `/health` answers 200 (what a user waits), on the 1M-event log
with a valid snapshot and `startup_tail` events after it. The ceiling is the same wait for a
bare aiohttp process (`bench.bare_server`): Python and aiohttp starting, nothing else.

    python -m bench.startup [--smoke]
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time

from bench import dataset
from bench.common import FULL, ROOT, Figure, Sizes, free_port, main_for, ratio, scratch, wait_healthy
from bench.replay import service_replay

TARGET_S = 1.0


def _time_to_health(command: list[str], env: dict[str, str], port: int, log) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return wait_healthy(f"http://127.0.0.1:{port}", proc) - started
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def run(sizes: Sizes = FULL) -> list[Figure]:
    log = dataset.cached_log(sizes.events, sizes.sessions)
    _, saved = service_replay(log)  # the snapshot at the end of the log
    work = scratch()
    db = dataset.copy_log(log, work / "startup.db")
    # The log grew after the snapshot: new sessions, written as the service writes them.
    asyncio.run(dataset.write_log(db, sizes.startup_tail, max(1, sizes.startup_tail // 10),
                                  first_session=sizes.sessions))
    snapshot = work / "startup.snapshot"
    output = work / "startup.log"
    service, bare = [], []
    with open(output, "wb") as out:
        # The first run is not measured: it warms the page cache and, after a change to
        # setup.cfg, lets `make` reinstall the package.
        for run_index in range(sizes.startup_runs + 1):
            # The service rewrites its snapshot at shutdown: put the one with a tail back.
            snapshot.write_bytes(saved)
            port = free_port()
            env = {"LLM_METRICS_DB": str(db), "LLM_METRICS_SNAPSHOT": str(snapshot),
                   "LLM_METRICS_PORT": str(port), "LLM_METRICS_SNAPSHOT_EVERY": "0"}
            service_s = _time_to_health(["make", "-s", "run"], env, port, out)
            port = free_port()
            bare_s = _time_to_health(
                [sys.executable, "-m", "bench.bare_server", "--port", str(port)], {}, port, out)
            if run_index:
                service.append(service_s)
                bare.append(bare_s)
    text = output.read_text(errors="replace")
    if f"loaded snapshot at position {sizes.events}" not in text:
        raise RuntimeError(f"the service did not use the snapshot:\n{text[-3000:]}")
    for path in (db, snapshot):
        path.unlink(missing_ok=True)
    value, ceiling = statistics.median(service), statistics.median(bare)
    return [Figure(
        name="startup",
        workload=f"`make run` to /health 200; snapshot + {sizes.startup_tail:,} events after it "
                 f"({sizes.events:,}-event log); median of {sizes.startup_runs}",
        value=round(value, 3), unit="s", ceiling=round(ceiling, 3),
        ceiling_what="bare aiohttp process to /health 200",
        ratio=round(ratio(value, ceiling, higher_is_better=False), 3),
        target=f"<= {TARGET_S} s", met=value <= TARGET_S,
        extra={"best_s": round(min(service), 3)},
    )]


if __name__ == "__main__":
    main_for(run)
