"""The real server process, started as `make run` starts it: ingest, read, restart, replay."""

from __future__ import annotations

import os
import subprocess
import urllib.parse

from tests import factories as f
from tests.server import ROOT, ServerProcess


def metrics(server: ServerProcess) -> dict:
    status, total = server.request("GET", "/events/metrics")
    assert status == 200
    status, sessions = server.request("GET", "/events/metrics/sessions?limit=1000")
    assert status == 200
    return {"total": total, "sessions": sessions}


def test_ingest_restart_and_make_replay_agree(tmp_path):
    db = tmp_path / "data" / "events.db"
    facts = db.with_name("events.db.facts.duckdb")
    events = f.seed_session("abc-123") + f.seed_session("team/a b") + [
        f.started(session_id="open", request_id="x")]
    with ServerProcess(db) as server:
        status, body = server.request("POST", "/events", events)
        assert status == 201 and body["appended"] == len(events)
        status, session = server.request(
            "GET", "/events/metrics/session/" + urllib.parse.quote("team/a b", safe=""))
        assert status == 200 and session["average_duration_ms"] == 3214.29
        before = metrics(server)
        assert server.stop() == 0
    assert facts.exists()

    with ServerProcess(db) as server:
        assert metrics(server) == before
        # The facts persist with their position: startup applies only the log after it.
        assert "applied 0 events" in server.log()

    run = subprocess.run(["make", "replay"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "LLM_METRICS_DB": str(db)}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"replayed {len(events)} events" in run.stdout

    with ServerProcess(db) as server:
        assert metrics(server) == before
        status, _ = server.request("POST", "/events", [f.completed(session_id="open",
                                                                   request_id="x")])
        assert status == 201
        after = metrics(server)
        assert after["total"]["in_flight_requests"] == 0
        server.kill()  # kill -9: no clean shutdown, no final checkpoint of the facts

    with ServerProcess(db) as server:
        assert metrics(server) == after


def test_a_crash_between_the_log_commit_and_the_facts_is_repaired_at_startup(tmp_path):
    """Events committed to the log but never applied to the facts (the process died in
    between, here made certain by appending with the store while no server runs) are applied
    by the next startup, and the answers equal a full rebuild's."""
    import asyncio

    import msgspec

    from events.schema import WireEvent
    from events.sqlite_store import SQLiteStore
    from service.ingest import prepare

    db = tmp_path / "events.db"
    with ServerProcess(db) as server:
        assert server.request("POST", "/events", f.seed_session("s1"))[0] == 201
        server.kill()

    async def append_behind_the_facts():
        store = await SQLiteStore.open(db)
        try:
            wire = [msgspec.json.decode(msgspec.json.encode(e), type=WireEvent)
                    for e in f.seed_session("s2") + [f.failed(session_id="s1", request_id="z")]]
            await store.append([prepare(wire)])
        finally:
            await store.close()

    asyncio.run(append_behind_the_facts())
    with ServerProcess(db) as server:
        repaired = metrics(server)
        assert repaired["total"]["total_sessions"] == 2
        assert repaired["total"]["failed_requests"] == 3
        assert "applied 31 events" in server.log()
    run = subprocess.run(["make", "replay"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "LLM_METRICS_DB": str(db)}, timeout=300)
    assert run.returncode == 0, run.stderr
    with ServerProcess(db) as server:
        assert metrics(server) == repaired


def test_default_secret_is_refused_off_loopback(tmp_path):
    server = ServerProcess(tmp_path / "x.db", LLM_METRICS_HOST="0.0.0.0")
    try:
        server.start(timeout=10)
        raise AssertionError("the server started on 0.0.0.0 with the default secret")
    except RuntimeError as exc:
        assert "refusing to listen" in str(exc) and "LLM_METRICS_SECRET" in str(exc)


def test_signals_during_shutdown_do_not_cut_it_short(tmp_path):
    """`make run` forwards its SIGTERM to the server, so stopping the process group delivers
    two, and impatient users press Ctrl-C again: a signal that arrives while the shutdown
    waits for an open request must not abandon the cleanup half-way (that left the log's
    connection open and the process hung at exit, forever)."""
    import signal
    import socket
    import time

    db = tmp_path / "events.db"
    server = ServerProcess(db).start()
    try:
        assert server.request("POST", "/events", f.seed_session("s1"))[0] == 201
        # A request whose body never finishes: the shutdown waits for it (up to 5 s).
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\nx-internal-auth: secret\r\n"
                     b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n[")
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        for again in (signal.SIGTERM, signal.SIGINT):
            server.proc.send_signal(again)
            time.sleep(0.1)
        assert server.proc.wait(20) == 0, server.log()
        slow.close()
    finally:
        server.kill()
    assert "SIGTERM again: already shutting down" in server.log()
    with ServerProcess(db) as server:
        assert metrics(server)["total"]["total_sessions"] == 1
        assert "rebuilt" not in server.log()
