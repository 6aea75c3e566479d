"""The soak test: a real server under steady mixed load; memory must stay flat and latency must
not drift.

    python -m tests.soak [--seconds 60] [--warmup 15] [--fraction 0.8 | --rate N]   (`make soak`)

First the benchmark: the same mix of requests, closed-loop over 16 keep-alive connections for a
few seconds, gives the rate this server sustains on this machine. Then the soak: open-loop load
at `--fraction` (80%) of that rate, or at `--rate` requests/s (requests are sent on schedule
whether or not earlier ones were answered, and latency is measured from the scheduled time, so
a stall shows up instead of slowing the load down). The mix: single-event posts, 20-event
batches, and reads of one session, the global totals and a page of sessions, over a bounded
set of sessions so the read models reach a steady size. The server's RSS is sampled every
second from /proc.

Passes when, after the warm-up, RSS grows less than 10%, the p99 does not drift (the median
p99 of the 5 s windows of the second half is within 1.5x + 20 ms of the first half's), every
request succeeded, and the server kept up (the last answer came less than 2 s after the end of
the schedule). On a machine shared with
other work the measured rate is noisy; `--rate` fixes it instead.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import msgspec

from tests.server import SECRET, ServerProcess

SESSIONS = 1000
CONNECTIONS = 16
BATCH = 10  # started + completed pairs, so 20 events
WINDOW_S = 10.0  # the table's windows
TREND_S = 5.0  # the windows the p99 trend is fitted to
MIX = [("post one", 0.5), ("post batch", 0.1), ("get session", 0.25), ("get global", 0.1),
       ("get sessions", 0.05)]


class Sample(msgspec.Struct, array_like=True):
    at: float  # scheduled time, seconds since the start
    kind: str
    latency_ms: float
    status: int


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class Traffic:
    """Requests in an order that keeps the read models bounded: every request id is started and
    then completed, in a session chosen from a fixed set."""

    def __init__(self, rng: random.Random, name: str):
        self.rng = rng
        self.name = name  # request ids are unique per Traffic: f"{name}{n}"
        self.ids = itertools.count()
        self.open: list[tuple[str, str]] = []  # started, waiting for their completion

    def event_pair(self) -> tuple[dict, dict]:
        sid, rid = f"soak-{self.rng.randrange(SESSIONS)}", f"{self.name}{next(self.ids)}"
        started = dict(type="LLM_REQUEST_STARTED", session_id=sid, request_id=rid,
                       model="gpt-4o", timestamp=now_iso())
        done = dict(type="LLM_REQUEST_COMPLETED", session_id=sid, request_id=rid, model="gpt-4o",
                    timestamp=now_iso(), duration_ms=self.rng.randint(100, 5000),
                    prompt_tokens=self.rng.randint(10, 3000),
                    completion_tokens=self.rng.randint(10, 1000))
        return started, done

    def next(self) -> tuple[str, str, str, bytes]:
        kind = self.rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        if kind == "post one":
            if self.open and self.rng.random() < 0.5:
                event = self.open.pop(self.rng.randrange(len(self.open)))
            else:
                started, done = self.event_pair()
                self.open.append(done)
                event = started
            return kind, "POST", "/events", msgspec.json.encode(event)
        if kind == "post batch":
            events = [e for _ in range(BATCH) for e in self.event_pair()]
            return kind, "POST", "/events", msgspec.json.encode(events)
        if kind == "get session":
            return kind, "GET", f"/events/metrics/session/soak-{self.rng.randrange(SESSIONS)}", b""
        if kind == "get global":
            return kind, "GET", "/events/metrics", b""
        return kind, "GET", f"/events/metrics/sessions?limit=100&cursor={self.rng.randrange(900)}", b""


def wire(method: str, path: str, body: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nx-internal-auth: {SECRET}\r\n"
    if body:
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


async def exchange(reader, writer, method: str, path: str, body: bytes) -> int:
    writer.write(wire(method, path, body))
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


async def connection(port: int, traffic: Traffic, rate: float | None, start: float,
                     seconds: float, samples: list[Sample]) -> None:
    """One keep-alive connection sending `rate` requests a second on schedule (None: each as
    soon as the previous one is answered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    interval = 1.0 / rate if rate else 0.0
    scheduled = start + random.random() * interval
    try:
        while scheduled < start + seconds:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            kind, method, path, body = traffic.next()
            status = await exchange(reader, writer, method, path, body)
            samples.append(Sample(scheduled - start, kind, (time.perf_counter() - scheduled) * 1000,
                                  status))
            scheduled = scheduled + interval if rate else time.perf_counter()
    finally:
        writer.close()


async def seed(port: int) -> None:
    """Every session exists before the first read of it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    traffic = Traffic(random.Random(1), "seed")
    try:
        for lo in range(0, SESSIONS, 100):
            events = []
            for n in range(lo, lo + 100):
                started, done = traffic.event_pair()
                events += [{**started, "session_id": f"soak-{n}"}, {**done, "session_id": f"soak-{n}"}]
            assert await exchange(reader, writer, "POST", "/events", msgspec.json.encode(events)) == 201
    finally:
        writer.close()


async def benchmark(server: ServerProcess, warmup: float = 10.0, seconds: float = 8.0) -> float:
    """Requests/s of the mix, closed-loop over CONNECTIONS connections, after `warmup` s: a
    fresh log answers about a third faster until SQLite's first WAL checkpoints (about 10 s of
    this load), and the soak must run at a fraction of the steady rate, not of that burst."""
    await seed(server.port)
    traffic = Traffic(random.Random(3), "bench")
    samples: list[Sample] = []
    start = time.perf_counter()
    await asyncio.gather(*(connection(server.port, traffic, None, start, warmup + seconds,
                                      samples) for _ in range(CONNECTIONS)))
    measured = [s for s in samples if warmup <= s.at + s.latency_ms / 1000]
    return len(measured) / (time.perf_counter() - start - warmup)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def sample_rss(pid: int, start: float, seconds: float, out: list[tuple[float, int]]):
    while (t := time.perf_counter() - start) < seconds:
        out.append((t, rss_kib(pid)))
        await asyncio.sleep(1.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def drive(server: ServerProcess, rate: float, seconds: float):
    """The soak itself: returns the samples and the RSS readings."""
    traffic = Traffic(random.Random(7), "soak")
    samples: list[Sample] = []
    rss: list[tuple[float, int]] = []
    start = time.perf_counter() + 0.2
    await asyncio.gather(
        sample_rss(server.proc.pid, start, seconds, rss),
        *(connection(server.port, traffic, rate / CONNECTIONS, start, seconds, samples)
          for _ in range(CONNECTIONS)))
    return samples, rss


def report(samples: list[Sample], rss: list[tuple[float, int]], seconds: float, warmup: float,
           rate: float) -> list[str]:
    """Print the run window by window; return the failed checks."""
    failures = []
    bad = [s for s in samples if s.status >= 300]
    events = sum(1 if s.kind == "post one" else 2 * BATCH for s in samples if s.kind.startswith("post"))
    print(f"soak: {len(samples):,} requests in {seconds:.0f} s ({len(samples) / seconds:,.0f}/s, "
          f"target {rate:,.0f}/s), {events:,} events, {len(bad)} failed")
    print(f"{'window':>10} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'RSS MiB':>8}")
    windows = []
    for lo in range(0, int(seconds), int(WINDOW_S)):
        hi = lo + WINDOW_S
        lat = [s.latency_ms for s in samples if lo <= s.at < hi]
        mem = [kib for t, kib in rss if lo <= t < hi]
        windows.append((lo, lat, mem))
        print(f"{lo:>4.0f}-{hi:<4.0f}s {len(lat):>9,} {percentile(lat, .5):>8.1f} "
              f"{percentile(lat, .99):>8.1f} {max(lat, default=0):>8.1f} "
              f"{(mem[-1] if mem else 0) / 1024:>8.1f}")
    for kind, _ in MIX:
        lat = [s.latency_ms for s in samples if s.kind == kind and s.at >= warmup]
        print(f"  {kind:<13} {len(lat):>7,} requests, p50 {percentile(lat, .5):6.1f} ms, "
              f"p99 {percentile(lat, .99):6.1f} ms")
    if bad:
        statuses = sorted({s.status for s in bad})
        failures.append(f"{len(bad)} requests failed (statuses {statuses})")
    behind = max((s.at + s.latency_ms / 1000 for s in samples), default=0) - seconds
    if behind > 2:
        failures.append(f"the last answers came {behind:.1f} s after the end of the schedule: the "
                        "server did not keep up with this rate (a busy machine? try --rate)")
    after = [kib for t, kib in rss if t >= warmup]
    if after:
        growth = after[-1] / after[0] - 1
        print(f"RSS after warm-up: {after[0] / 1024:.1f} -> {after[-1] / 1024:.1f} MiB "
              f"({growth:+.1%}; limit +10%)")
        if growth >= 0.10:
            failures.append(f"RSS grew {growth:.1%} after warm-up")
    first, last = p99_trend(samples, warmup, seconds)
    print(f"p99 after warm-up, median of {TREND_S:.0f} s windows: first half {first:.1f} ms, "
          f"second half {last:.1f} ms (limit 1.5x + 20 ms)")
    if last > 1.5 * first + 20:
        failures.append(f"p99 drifted from {first:.1f} ms to {last:.1f} ms")
    return failures


def p99_trend(samples: list[Sample], warmup: float, seconds: float) -> tuple[float, float]:
    """The typical p99 of the first and of the second half of the measured part: the median of
    the p99s of the TREND_S windows in each half, so that a few windows hit by a neighbour's CPU
    burst do not pass for a trend."""
    points = []
    lo = warmup
    while lo + TREND_S <= seconds:
        lat = [s.latency_ms for s in samples if lo <= s.at < lo + TREND_S]
        if lat:
            points.append(percentile(lat, .99))
        lo += TREND_S
    if not points:
        return 0.0, 0.0
    half = max(1, len(points) // 2)
    first, second = sorted(points[:half]), sorted(points[-half:])
    return first[len(first) // 2], second[len(second) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fraction", type=float, default=0.8,
                        help="soak at this fraction of the rate the benchmark phase measures")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests/s, all kinds together, instead of measuring it first")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds not judged")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as work:
        with ServerProcess(Path(work) / "events.db") as server:
            rate = args.rate
            if not rate:
                ceiling = asyncio.run(benchmark(server))
                rate = args.fraction * ceiling
                print(f"benchmark: {ceiling:,.0f} requests/s of the mix, closed-loop over "
                      f"{CONNECTIONS} connections; soaking at {args.fraction:.0%}: {rate:,.0f}/s")
            else:
                asyncio.run(seed(server.port))
            samples, rss = asyncio.run(drive(server, rate, args.seconds))
            if server.proc.poll() is not None:
                print("the server died:\n" + server.log()[-3000:])
                return 1
    failures = report(samples, rss, args.seconds, args.warmup, rate)
    for failure in failures:
        print("FAIL:", failure)
    print("soak: " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
