"""Startup: `make run` until `/health` answers 200 (what a user waits), with the facts of the
1M-event log (and of the 10M-event one when cached) present and `startup_tail` events appended
to the log after them: startup opens the facts and applies only the tail. The ceiling is the
same wait for `make run` on an empty log (Python, the imports, an empty facts file).

    python -m bench.startup [--smoke]
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

from bench import dataset
from bench.common import (FULL, ROOT, Figure, Sizes, big_log, free_port, main_for, ratio,
                          scratch, wait_healthy)
from bench.replay import cached_facts

TARGET_S = 0.5


def _time_to_health(env: dict[str, str], port: int, out, timeout: float = 60.0) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(["make", "-s", "run"], cwd=ROOT, env={**os.environ, **env},
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return wait_healthy(f"http://127.0.0.1:{port}", proc, timeout) - started
    except RuntimeError as exc:
        out.flush()
        raise RuntimeError(f"{exc}; its output:\n{Path(out.name).read_text()[-3000:]}") from None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _env(db: Path, facts: Path, port: int) -> dict[str, str]:
    return {"LLM_METRICS_DB": str(db), "LLM_METRICS_FACTS": str(facts),
            "LLM_METRICS_PORT": str(port)}


def measure(log: Path, events: int, sessions: int, sizes: Sizes) -> Figure:
    cached_facts(log)
    work = scratch()
    db = dataset.copy_log(log, work / f"startup-{events}.db")
    # The log grew after the facts were saved: new sessions, written as the service writes them.
    asyncio.run(dataset.write_log(db, sizes.startup_tail, max(1, sizes.startup_tail // 10),
                                  first_session=sessions))
    empty = work / f"startup-empty-{events}.db"
    run_facts = work / f"startup-{events}.facts.duckdb"
    empty_facts = work / f"startup-empty-{events}.facts.duckdb"
    output = work / f"startup-{events}.out"
    service, bare = [], []
    with open(output, "wb") as out:
        # The first run is not measured: it warms the page cache and, after a change to
        # setup.cfg, lets `make` reinstall the package.
        for run_index in range(sizes.startup_runs + 1):
            # Each start saves the facts with the tail applied: put the ones without it back.
            dataset.copy_facts(log, run_facts)
            port = free_port()
            # The first `make run` may reinstall the package: give it minutes.
            service_s = _time_to_health(_env(db, run_facts, port), port, out,
                                        60.0 if run_index else 600.0)
            for path in (empty, empty_facts):
                path.unlink(missing_ok=True)
            port = free_port()
            empty_s = _time_to_health(_env(empty, empty_facts, port), port, out)
            if run_index:
                service.append(service_s)
                bare.append(empty_s)
    text = output.read_text(errors="replace")
    if f"applied {sizes.startup_tail} events" not in text or "rebuilt" in text:
        raise RuntimeError(f"the service did not start from the saved facts:\n{text[-3000:]}")
    for path in work.glob(f"startup*-{events}*"):
        path.unlink(missing_ok=True)
    value, ceiling = statistics.median(service), statistics.median(bare)
    return Figure(
        name=f"startup, {events:,} events",
        workload=f"`make run` to /health 200; facts of {events:,} events + {sizes.startup_tail:,} "
                 f"events after them in the log; median of {sizes.startup_runs}",
        value=round(value, 3), unit="s", ceiling=round(ceiling, 3),
        ceiling_what="`make run` on an empty log to /health 200",
        ratio=round(ratio(value, ceiling, higher_is_better=False), 3),
        target=f"<= {TARGET_S} s", met=value <= TARGET_S,
        extra={"best_s": round(min(service), 3)},
    )


def run(sizes: Sizes = FULL) -> list[Figure]:
    log = dataset.cached_log(sizes.events, sizes.sessions)
    figures = [measure(log, sizes.events, sizes.sessions, sizes)]
    big = big_log(sizes)
    if big is not None:
        figures.append(measure(big, sizes.big_events, sizes.big_sessions, sizes))
    return figures


if __name__ == "__main__":
    main_for(run)
