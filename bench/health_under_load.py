"""`/health` latency while the service works: 4 clients post 1000-event batches of new
sessions and one client asks the query figures' questions in a loop, on the 1M-event log
(the server started from its facts). A prober asks `/health` every 10 ms over one keep-alive
connection (`bench.loop_stall.Prober`, latency counted from when each probe was due), so its
p99 is how long the event loop was held. The ceiling is the same prober on the same server
while idle, just before: the machine's own scheduling noise.

    python -m bench.health_under_load [--smoke]
"""

from __future__ import annotations

import threading
import time

from bench import dataset
from bench.common import FULL, Figure, Sizes, facts_service, main_for, ratio, scratch
from bench.loop_stall import Prober, post, summary
from bench.queries import ask_each

TARGET_P99_MS = 20.0


def run(sizes: Sizes = FULL) -> list[Figure]:
    log = dataset.cached_log(sizes.events, sizes.sessions)
    db = dataset.copy_log(log, scratch() / "health-load.db")
    per_client = sizes.batch_events // sizes.batch_clients
    bodies = [list(dataset.batches(per_client, max(1, per_client // 10), sizes.batch_size,
                                   first_session=sizes.sessions + c * per_client))
              for c in range(sizes.batch_clients)]
    idle_s = 2.0 if sizes is FULL else 0.3
    try:
        with facts_service(log, db, "health-load") as server:
            prober = Prober(server.port)
            prober.start()
            time.sleep(idle_s)
            idle = summary(prober.take())
            stop = threading.Event()
            asked = [0]

            def ask() -> None:
                while not stop.is_set():
                    ask_each(server.url, sizes.events, sizes.sessions)
                    asked[0] += 1

            def ingest(batches: list[bytes]) -> None:
                for body in batches:
                    post(server.port, body)

            clients = [threading.Thread(target=ingest, args=(b,)) for b in bodies]
            asker = threading.Thread(target=ask)
            started = time.perf_counter()
            asker.start()
            for t in clients:
                t.start()
            for t in clients:
                t.join()
            seconds = time.perf_counter() - started
            stop.set()
            asker.join()
            busy = summary(prober.take())
            prober.stopped.set()
            prober.join()
    finally:
        db.unlink(missing_ok=True)
    if not asked[0]:
        raise RuntimeError("no round of questions finished during the ingest")
    return [Figure(
        name="/health p99 under load",
        workload=f"/health every 10 ms while {sizes.batch_clients} clients post "
                 f"{sizes.batch_events:,} events in {sizes.batch_size}-event batches and one "
                 f"asks the query figures' questions, {sizes.events:,}-event log",
        value=busy["p99_ms"], unit="ms", ceiling=max(idle["p99_ms"], 0.1),
        ceiling_what="the same prober on the same server, idle",
        ratio=round(ratio(busy["p99_ms"], max(idle["p99_ms"], 0.1), higher_is_better=False), 3),
        target=f"p99 <= {TARGET_P99_MS:g} ms", met=busy["p99_ms"] <= TARGET_P99_MS,
        extra={"p50_ms": busy["p50_ms"], "max_ms": busy["max_ms"],
               "ingest_events_per_s": round(sizes.batch_events / seconds),
               "question_rounds": asked[0]},
    )]


if __name__ == "__main__":
    main_for(run)
