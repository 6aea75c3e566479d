"""How long big batches hold the server's event loop: `/health` latency while they are ingested.

    python -m bench.loop_stall [--events 100000] [--clients 3] [--client-events 40000]

A real server (`LLM_METRICS_MAX_BODY=64MiB`) on a scratch log. A prober asks `/health` every
10 ms over one keep-alive connection; `/health` does no work, so its latency (counted from when
each probe was due) is the time the loop was busy with something else. Three phases: idle, one client posting one batch of
`--events` events, then `--clients` clients posting `--client-events` events each, twice. Prints
p50 / p99 / max per phase (also as JSON with `--json`) and each phase's ingest rate.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from pathlib import Path

from bench.common import ServerProcess, scratch
from tests import factories as f


def body(events: int, prefix: str) -> bytes:
    """`events` events (started and completed in turn), about 250 bytes each, as a JSON array."""
    out = []
    for i in range(events // 2):
        session = f"{prefix}-s{i // 20}"
        common = dict(user_id=f"user-{i % 50}", tags=["bench", f"t{i % 7}"], provider="openai")
        out.append(f.started(session, f"r{i}", model="gpt-4o-mini", t=i, **common))
        out.append(f.completed(session, f"r{i}", model="gpt-4o-mini", t=i + 0.5,
                               duration_ms=812.5, prompt_tokens=900 + i % 100,
                               completion_tokens=300, **common))
    return json.dumps(out).encode()


class Prober(threading.Thread):
    """`GET /health` every `interval` s; keeps each answer's latency in ms."""

    def __init__(self, port: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.latencies: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        # Latency counts from when a probe was due, not from when it could be sent: a loop held
        # for 2 s then shows as 200 late probes, not one (no coordinated omission).
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        due = time.perf_counter()
        while not self.stopped.is_set():
            time.sleep(max(0.0, due - time.perf_counter()))
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            now = time.perf_counter()
            while due <= now:
                self.latencies.append((now - due) * 1000)
                due += self.interval
        conn.close()

    def take(self) -> list[float]:
        taken, self.latencies = self.latencies, []
        return taken


def post(port: int, data: bytes, key: str = "secret") -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/events", body=data, headers={
        "x-internal-auth": key, "content-type": "application/json"})
    response = conn.getresponse()
    answer = response.read()
    assert response.status == 201, (response.status, answer[:300])
    conn.close()


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    if not ordered:
        return {"samples": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"samples": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99),
            "max_ms": round(ordered[-1], 1)}


def measure(events: int, clients: int, client_events: int, folder: Path) -> dict[str, dict]:
    big = body(events, "big")
    small = [[body(client_events, f"c{c}-{n}") for n in range(2)] for c in range(clients)]
    results: dict[str, dict] = {}
    with ServerProcess(folder / "events.db", LLM_METRICS_MAX_BODY="64MiB",
                       LLM_METRICS_MAX_EVENTS=str(max(events, client_events)),
                       LLM_METRICS_MAX_PENDING=str(10 * max(events, client_events))) as server:
        prober = Prober(server.port)
        prober.start()
        time.sleep(1.0)
        results["idle"] = summary(prober.take())

        started = time.perf_counter()
        post(server.port, big)
        seconds = time.perf_counter() - started
        results[f"one batch of {events:,}"] = {
            **summary(prober.take()), "events_per_s": round(events / seconds)}

        def client(bodies: list[bytes]) -> None:
            for data in bodies:
                post(server.port, data)

        threads = [threading.Thread(target=client, args=(bodies,)) for bodies in small]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        results[f"{clients} clients x 2 batches of {client_events:,}"] = {
            **summary(prober.take()), "events_per_s": round(clients * 2 * client_events / seconds)}
        prober.stopped.set()
        prober.join()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--client-events", type=int, default=40_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = measure(args.events, args.clients, args.client_events, scratch())
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for phase, figures in results.items():
            print(f"{phase:36} " + "  ".join(f"{k} {v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
