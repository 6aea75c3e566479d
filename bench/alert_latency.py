"""How long from an acknowledged POST to the webhook it causes (`python -m bench.alert_latency`).

A real server process, a real receiver, a rule grouped by user: each sample posts one request
of a user never seen, which makes that user's group fire. Measured twice: on an empty log, and
with `--users` (default 10,000) users already firing, so each evaluation reads that many groups.
On the empty log, once with 3 s of quiet before each event, once with events back to back.
Not part of `make bench`: the issue's bound is 5 s, the figure is far from any ceiling.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.server import ServerProcess
from tests.webhook_receiver import Receiver

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def request(user: str, n: int) -> dict:
    return {"type": "LLM_REQUEST_COMPLETED", "session_id": f"s-{user}", "request_id": f"r{n}",
            "model": "gpt-4o", "user_id": user, "event_id": f"{user}-{n}",
            "timestamp": (T0 + timedelta(milliseconds=n)).isoformat(), "duration_ms": 100,
            "prompt_tokens": 10, "completion_tokens": 5}


def samples(server: ServerProcess, hooks: Receiver, count: int, first: int,
            pause_s: float = 0.0) -> list[float]:
    """Seconds from each POST's answer to its webhook; `pause_s` of quiet before each POST."""
    seconds = []
    for k in range(count):
        time.sleep(pause_s)
        user, before = f"new{first + k}", len(hooks.requests())
        status, _ = server.request("POST", "/events", [request(user, first + k)])
        assert status == 201
        acked = time.monotonic()
        (got,) = hooks.wait_for(before + 1, timeout=10)[before:before + 1]
        assert got.json["group"] == {"user_id": user}
        seconds.append(got.at - acked)
    return seconds


def report(label: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    print(f"{label}: n={len(ms)} p50={statistics.median(ms):.0f} ms "
          f"p95={ms[int(0.95 * (len(ms) - 1))]:.0f} ms max={ms[-1]:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Receiver() as hooks, \
            ServerProcess(Path(tmp) / "events.db") as server:
        status, body = server.request("POST", "/alerts/rules", {
            "name": "any-user", "measure": "total_requests", "op": ">=", "threshold": 1,
            "window": "30d", "group_by": "user_id", "webhook_url": hooks.url})
        assert status == 201, body
        # After a quiet spell the evaluator waits only its debounce; under steady events it
        # starts at most every MIN_GAP_S.
        report("empty log, each event after 3 s of quiet",
               samples(server, hooks, args.samples, 0, pause_s=3.0))
        report("empty log, events back to back",
               samples(server, hooks, args.samples, args.samples))
        batch = [request(f"old{i}", 1_000_000 + i) for i in range(args.users)]
        for start in range(0, len(batch), 5000):
            assert server.request("POST", "/events", batch[start:start + 5000])[0] == 201
        hooks.wait_for(2 * args.samples + args.users, timeout=600)
        report(f"{args.users} groups firing, events back to back",
               samples(server, hooks, args.samples, 2 * args.samples))


if __name__ == "__main__":
    main()
