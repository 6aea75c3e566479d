"""No acknowledged event is lost: `kill -9` at random moments during concurrent ingest.

Each round starts the real server on the same SQLite file, checks what the previous round left
(every acknowledged event present exactly once, every batch all or nothing, the read models
equal to the log), retries some unacknowledged batches as a client would, then drives
concurrent single-event and batch posts and kills the process with SIGKILL at a random moment.
Some rounds end with SIGTERM instead. Every round restarts from the persisted facts plus the
log after them (a kill can land between a commit and its facts update: startup repairs that).
At the end the metrics must equal those after a full `python -m service replay`.

`KILL_ROUNDS` (default 20) and `KILL_SEED` (random; printed on failure) reproduce a run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests import factories as f
from tests.server import SECRET, ServerProcess, run_cli

pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("KILL_ROUNDS", "20"))
CLIENTS = 6


@dataclass
class Ledger:
    """What the clients sent, and which batches the server acknowledged."""

    events: dict[str, dict] = field(default_factory=dict)  # event_id -> wire event
    batches: dict[str, list[str]] = field(default_factory=dict)  # batch -> its event ids
    acked: set[str] = field(default_factory=set)  # acknowledged batches
    unacked: set[str] = field(default_factory=set)  # sent, answer lost (killed mid-request)
    seq: int = 0

    def new_batch(self, rng: random.Random, round_: int, client: int) -> tuple[str, list[dict]]:
        self.seq += 1
        name = f"r{round_}c{client}b{self.seq}"
        size = 1 if rng.random() < 0.5 else rng.randint(2, 40)
        events = []
        for k in range(size):
            sid, rid, t = f"s{rng.randint(0, 30)}", f"{name}-{k}", rng.uniform(0, 1000)
            kind = rng.random()
            if kind < 0.35:
                event = f.started(sid, rid, t=t)
            elif kind < 0.85:
                event = f.completed(sid, rid, t=t, duration_ms=rng.randint(1, 5000),
                                    prompt_tokens=rng.randint(0, 4000),
                                    completion_tokens=rng.randint(0, 2000),
                                    has_tool_calls=rng.random() < 0.3)
            else:
                event = f.failed(sid, rid, t=t, error_type=rng.choice(["Timeout", "RateLimit"]))
            event["event_id"] = f"{name}-{k}"
            events.append(event)
            self.events[event["event_id"]] = event
        self.batches[name] = [e["event_id"] for e in events]
        return name, events


def stored_ids(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT position, event_id FROM events ORDER BY position").fetchall()
    assert [p for p, _ in rows] == list(range(1, len(rows) + 1)), "positions must be gapless"
    return [event_id for _, event_id in rows]


def check_log(db: Path, ledger: Ledger) -> set[str]:
    """Every acknowledged event present exactly once; every batch all or nothing."""
    ids = stored_ids(db)
    present = set(ids)
    assert len(ids) == len(present), "an event is stored twice"
    assert present <= set(ledger.events), "an event nobody sent is stored"
    for name, batch in ledger.batches.items():
        found = sum(event_id in present for event_id in batch)
        if name in ledger.acked:
            assert found == len(batch), f"acknowledged batch {name} lost {len(batch) - found} events"
        else:
            assert found in (0, len(batch)), f"batch {name}: {found} of {len(batch)} visible"
    return present


def oracle(events: list[dict]) -> dict:
    """The global totals a log of these events must give (a few lines, independent of the fold)."""
    done = [e for e in events if e["type"] == "LLM_REQUEST_COMPLETED"]
    finished = {(e["session_id"], e["request_id"]) for e in events if e["type"] != "LLM_REQUEST_STARTED"}
    started = {(e["session_id"], e["request_id"]) for e in events if e["type"] == "LLM_REQUEST_STARTED"}
    return {
        "successful_requests": len(done),
        "failed_requests": sum(e["type"] == "LLM_REQUEST_FAILED" for e in events),
        "total_prompt_tokens": sum(e["prompt_tokens"] for e in done),
        "total_completion_tokens": sum(e["completion_tokens"] for e in done),
        "requests_with_tools": sum(e["has_tool_calls"] for e in done),
        "total_duration_ms": sum(e["duration_ms"] for e in done),
        "in_flight_requests": len(started - finished),
        "total_sessions": len({e["session_id"] for e in events}),
    }


def comparable(glob: dict, expected: dict) -> dict:
    """The oracle's fields of a global answer; a request open too long counts as stale, not in
    flight, so the two are added up."""
    got = {k: glob[k] for k in expected}
    got["in_flight_requests"] += glob.get("stale_requests", 0)
    return got


def all_metrics(server: ServerProcess) -> dict:
    """The global metrics and every session's, as the server answers them."""
    status, glob = server.request("GET", "/events/metrics")
    assert status == 200, glob
    sessions, cursor = [], 0
    while cursor is not None:
        status, page = server.request("GET", f"/events/metrics/sessions?limit=1000&cursor={cursor}")
        assert status == 200, page
        sessions += page["sessions"]
        cursor = page.get("next")
    return {"global": glob, "sessions": sessions}


async def drive(server: ServerProcess, ledger: Ledger, rng: random.Random, round_: int,
                seconds: float, stop_signal: signal.Signals) -> None:
    """Concurrent clients post until the server dies, which happens after `seconds`."""
    headers = {"x-internal-auth": SECRET}

    async def client(n: int, session: aiohttp.ClientSession):
        while True:
            name, events = ledger.new_batch(rng, round_, n)
            body = events[0] if len(events) == 1 and rng.random() < 0.5 else events
            try:
                async with session.post(server.url + "/events", json=body, headers=headers) as r:
                    answer = await r.json()
                    assert r.status == 201, answer
                    ledger.acked.add(name)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ledger.unacked.add(name)
                return

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = [asyncio.create_task(client(n, session)) for n in range(CLIENTS)]
        await asyncio.sleep(seconds)
        os.kill(server.proc.pid, stop_signal)
        await asyncio.gather(*tasks)
    server.proc.wait(15)


def retry_some(server: ServerProcess, ledger: Ledger, rng: random.Random, present: set[str]):
    """Clients retry batches whose answer they lost: stored ones come back as duplicates."""
    for name in sorted(ledger.unacked):
        if rng.random() < 0.5:
            continue
        events = [ledger.events[i] for i in ledger.batches[name]]
        status, answer = server.request("POST", "/events", events)
        assert status == 201, answer
        was_stored = ledger.batches[name][0] in present
        assert answer["duplicates"] == (len(events) if was_stored else 0), (name, answer)
        assert answer["appended"] + answer["duplicates"] == len(events)
        ledger.unacked.discard(name)
        ledger.acked.add(name)


def test_kill_9_during_concurrent_ingest_loses_no_acknowledged_event(tmp_path):
    seed = int(os.environ.get("KILL_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    db = tmp_path / "events.db"
    ledger = Ledger()
    kills = 0
    for round_ in range(ROUNDS):
        server = ServerProcess(db, LLM_METRICS_SNAPSHOT_EVERY="0").start()
        try:
            present = check_log(db, ledger)
            expected = oracle([ledger.events[i] for i in stored_ids(db)])
            got = comparable(all_metrics(server)["global"], expected)
            assert got == expected, f"seed {seed}, round {round_}"
            retry_some(server, ledger, rng, present)
            clean = round_ % 5 == 4
            asyncio.run(drive(server, ledger, rng, round_, rng.uniform(0.05, 0.6),
                              signal.SIGTERM if clean else signal.SIGKILL))
            kills += not clean
            if clean:
                assert server.proc.returncode == 0, server.log()
        finally:
            server.kill()
    assert kills >= 16 and len(ledger.unacked) + len(ledger.acked) == len(ledger.batches)

    server = ServerProcess(db).start()
    try:
        check_log(db, ledger)
        assert "rebuilt from the whole log" not in server.log(), "facts + tail, not a rebuild"
        from_facts_and_tail = all_metrics(server)
    finally:
        server.stop()
    replayed = run_cli("replay", env={"LLM_METRICS_DB": str(db)})
    assert replayed.returncode == 0, replayed.stderr
    with ServerProcess(db) as server:
        assert all_metrics(server) == from_facts_and_tail, f"seed {seed}"
        expected = oracle([ledger.events[i] for i in stored_ids(db)])
        assert comparable(from_facts_and_tail["global"], expected) == expected
