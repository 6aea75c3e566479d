"""Erasure and retention through real server processes, on SQLite and on PostgreSQL.

A session and a user are erased while their requests are spread over sessions that stay;
afterwards no route, no export, no restart, no `replay` and (SQLite) no byte of the log, its
WAL or the facts file shows any of their strings, and re-posting their events is a duplicate.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests import factories as f
from tests.postgres import schema_for_processes
from tests.server import ServerProcess, run_cli
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

SESSION = "ERASE-SESSION-7f3a"
USER = "ERASE-USER-91bc"
ONLY_MODEL = "ERASE-MODEL-only-4e2d"
ERROR = "ERASE-ERROR-MESSAGE-c0de"
# Every string of the erased requests: none may be found anywhere afterwards.
ERASED = [SESSION, USER, ONLY_MODEL, ERROR, "ERASE-REQ-", "ERASE-EVT-"]


def events() -> list[dict]:
    """Erased: the whole of SESSION (3 requests, 5 events) and every request any event of
    which names USER (3 requests over two other sessions, 5 events). Kept: 3 requests, 6 events,
    in the same sessions as USER's."""
    e = []

    def add(kind, session, request, t, **extra):
        eid = f"ERASE-EVT-{session}-{request}-{kind.__name__}" if "ERASE" in session + request \
            else f"keep-{session}-{request}-{kind.__name__}"
        e.append(kind(session, request, t=t, event_id=eid, **extra))

    add(f.started, SESSION, "ERASE-REQ-1", 0, user_id="keep-user", model=ONLY_MODEL)
    add(f.completed, SESSION, "ERASE-REQ-1", 1, model=ONLY_MODEL, prompt_tokens=1000)
    add(f.started, SESSION, "ERASE-REQ-2", 2)
    add(f.failed, SESSION, "ERASE-REQ-2", 3, error_message=ERROR)
    add(f.started, SESSION, "ERASE-REQ-3", 4)                       # pending
    add(f.started, "keep-1", "k1", 5, user_id="keep-user")
    add(f.completed, "keep-1", "k1", 6, prompt_tokens=7, completion_tokens=3)
    add(f.started, "keep-1", "ERASE-REQ-u1", 7, user_id=USER)        # only the start names USER
    add(f.completed, "keep-1", "ERASE-REQ-u1", 8, prompt_tokens=500)
    add(f.started, "keep-2", "ERASE-REQ-u2", 9, user_id="keep-user")
    add(f.failed, "keep-2", "ERASE-REQ-u2", 10, user_id=USER, error_message=ERROR)
    add(f.started, "keep-2", "ERASE-REQ-u3", 11, user_id=USER)       # pending
    add(f.started, "keep-2", "k2", 12, user_id="keep-user")
    add(f.completed, "keep-2", "k2", 13, prompt_tokens=20, completion_tokens=10)
    add(f.started, "keep-2", "k3", 14)
    add(f.failed, "keep-2", "k3", 15, error_type="Timeout")
    return e


READS = ["/events/metrics", "/events/metrics/sessions?limit=1000", "/events/metrics/models",
         "/events/metrics/users", "/events/metrics/tags", "/events/metrics/users/keep-user",
         "/events/metrics/session/keep-1", "/events/metrics/session/keep-2",
         "/events/metrics/session/keep-2/requests",
         "/events/metrics/query?group_by=model&group_by=user_id&group_by=session_id",
         "/events/metrics/timeseries?bucket=1h&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
         "/metrics"]


def answers(server: ServerProcess) -> dict[str, object]:
    """Every read route's answer (what must agree across restart and replay)."""
    out = {}
    for path in READS:
        status, body = server.request("GET", path)
        assert status == 200, (path, body)
        out[path] = body
    out["export"] = export(server)
    return out


def export(server: ServerProcess) -> list[dict]:
    status, body = server.request("GET", "/events?after=0&limit=10000")
    assert status == 200, body
    text = body if isinstance(body, str) else json.dumps(body)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_no_erased_string(text: str, where: str) -> None:
    found = [s for s in ERASED if s in text]
    assert not found, f"{where} still shows {found}"


def assert_no_erased_bytes(paths: list[Path]) -> None:
    for path in paths:
        if path.exists():
            data = path.read_bytes()
            found = [s for s in ERASED if s.encode() in data]
            assert not found, f"{path} ({len(data)} bytes) still holds {found}"


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def erase_and_check(server: ServerProcess) -> dict[str, object]:
    before = answers(server)
    assert any(SESSION in json.dumps(a) for a in before.values())  # the test can fail
    status, body = server.request("DELETE", f"/events/sessions/{quote(SESSION)}")
    assert (status, body) == (200, {"deleted_events": 5})
    status, body = server.request("DELETE", f"/events/users/{quote(USER)}")
    assert (status, body) == (200, {"deleted_events": 5})
    for path in (f"/events/sessions/{quote(SESSION)}", f"/events/users/{quote(USER)}",
                 "/events/users/nobody", "/events/sessions/nothing"):
        assert server.request("DELETE", path) == (200, {"deleted_events": 0})
    after = answers(server)
    for path, body in after.items():
        assert_no_erased_string(json.dumps(body) if not isinstance(body, str) else body, path)
    assert server.request("GET", f"/events/metrics/session/{quote(SESSION)}")[0] == 404
    assert server.request("GET", f"/events/metrics/users/{quote(USER)}")[0] == 404
    assert server.request("GET", f"/events/metrics/models/{quote(ONLY_MODEL)}")[0] == 404
    kept = [e["event_id"] for e in events() if e["event_id"].startswith("keep-")]
    assert sorted(e["event_id"] for e in after["export"]) == sorted(kept)
    total = after["/events/metrics"]
    assert (total["total_requests"], total["failed_requests"]) == (3, 1)
    assert total["total_sessions"] == 2
    assert total["total_prompt_tokens"] == 27
    return after


def repost_is_duplicate(server: ServerProcess) -> None:
    status, body = server.request("POST", "/events", events())
    assert status == 201, body
    assert (body["appended"], body["duplicates"]) == (0, len(events()))


def without_volatile(answers: dict[str, object]) -> dict[str, object]:
    out = dict(answers)
    # Counters of this process (events it appended, spans, requests in flight) restart at 0.
    per_process = ("llm_events_appended", "llm_otlp_spans", "llm_in_flight")
    out["/metrics"] = "\n".join(line for line in answers["/metrics"].splitlines()
                                if line.startswith("llm_") and not line.startswith(per_process))
    return out


def alerting_on_the_erased(server: ServerProcess, receiver: Receiver) -> None:
    """Rules grouped by user and by session, firing for every group (the erased ones too),
    each announced by a webhook: the alert file holds the erased ids before the erasure."""
    for name, dimension in (("per-user", "user_id"), ("per-session", "session_id")):
        status, body = server.request("POST", "/alerts/rules", {
            "name": name, "measure": "total_requests", "op": ">=", "threshold": 1,
            "window": "30d", "group_by": dimension, "webhook_url": receiver.url})
        assert status == 201, body
    wait_for(lambda: {USER, SESSION} <= {g for r in receiver.requests()
                                         for g in r.json["group"].values()})


def test_erasure_on_sqlite(tmp_path):
    db = tmp_path / "events.db"
    alerts = [Path(f"{db}.alerts.db"), Path(f"{db}.alerts.db-wal")]
    with Receiver() as receiver, ServerProcess(db) as server:
        assert server.request("POST", "/events", events())[0] == 201
        alerting_on_the_erased(server, receiver)
        after = erase_and_check(server)
        files = [db, Path(f"{db}-wal"), Path(f"{db}.facts.duckdb"),
                 Path(f"{db}.facts.duckdb.wal"), Path(f"{db}.answers.db"),
                 Path(f"{db}.answers.db-wal")]
        assert_no_erased_bytes(files + alerts)
        for path in ("/alerts", "/alerts/rules/per-user", "/alerts/rules/per-session",
                     "/alerts/deliveries"):
            status, body = server.request("GET", path)
            assert status == 200, (path, body)
            assert_no_erased_string(json.dumps(body), path)
        repost_is_duplicate(server)
        assert without_volatile(answers(server)) == without_volatile(after)
    with ServerProcess(db, port=server.port) as server:
        assert without_volatile(answers(server)) == without_volatile(after)
    replay = run_cli("replay", env={"LLM_METRICS_DB": str(db)})
    assert replay.returncode == 0, replay.stderr
    with ServerProcess(db, port=server.port) as server:
        assert without_volatile(answers(server)) == without_volatile(after)
        repost_is_duplicate(server)
    # The facts replay set aside were rewritten after the erasure too.
    assert Path(f"{db}.facts.duckdb.old").exists()
    assert_no_erased_bytes(files + [Path(f"{db}.facts.duckdb.old")])


def test_erasure_on_postgres_reaches_the_other_replica(tmp_path):
    with schema_for_processes("erase") as url:
        a = ServerProcess(tmp_path / "a.db", LLM_METRICS_DB=url,
                          LLM_METRICS_FACTS=str(tmp_path / "a.facts.duckdb"))
        b = ServerProcess(tmp_path / "b.db", LLM_METRICS_DB=url,
                          LLM_METRICS_FACTS=str(tmp_path / "b.facts.duckdb"))
        with a, b:
            assert a.request("POST", "/events", events())[0] == 201
            wait_for(lambda: b.request("GET", "/events/metrics")[1]["total_requests"] == 7)
            after = erase_and_check(a)
            try:
                wait_for(lambda: differences(answers(b), after) == [])
            except AssertionError:
                assert differences(answers(b), after) == []
            facts = [tmp_path / "a.facts.duckdb", tmp_path / "b.facts.duckdb"]
            assert_no_erased_bytes(facts + [Path(f"{p}.wal") for p in facts])
            repost_is_duplicate(b)
            assert without_volatile(answers(a)) == without_volatile(after)
        assert_no_erased_in_postgres(url)
        with ServerProcess(tmp_path / "b.db", port=b.port, LLM_METRICS_DB=url,
                           LLM_METRICS_FACTS=str(tmp_path / "b.facts.duckdb")) as b:
            assert without_volatile(answers(b)) == without_volatile(after)
        replay = run_cli("replay", env={"LLM_METRICS_DB": url, "LLM_METRICS_PORT": str(a.port),
                                        "LLM_METRICS_FACTS": str(tmp_path / "a.facts.duckdb")})
        assert replay.returncode == 0, replay.stderr
        with ServerProcess(tmp_path / "a.db", port=a.port, LLM_METRICS_DB=url,
                           LLM_METRICS_FACTS=str(tmp_path / "a.facts.duckdb")) as a:
            assert without_volatile(answers(a)) == without_volatile(after)


def assert_no_erased_in_postgres(url: str) -> None:
    """What SQL can see of the log: no live row holds an erased string (the bytes of dead
    rows are PostgreSQL's to reclaim: docs/event-log.md, "Erasure")."""
    import asyncio

    import asyncpg

    async def check():
        conn = await asyncpg.connect(url)
        try:
            for s in ERASED:
                n = await conn.fetchval("SELECT count(*) FROM events WHERE position($1 in payload)"
                                        " > 0 OR position($1 in event_id) > 0", s.encode())
                assert n == 0, s
            assert await conn.fetchval("SELECT count(*) FROM erased_events") == 10
            assert await conn.fetchval("SELECT count(*) FROM events WHERE type = 4") == 2
        finally:
            await conn.close()

    asyncio.run(check())


def differences(these: dict[str, object], those: dict[str, object]) -> list[tuple]:
    these, those = without_volatile(these), without_volatile(those)
    return [(path, these[path], those[path]) for path in these if these[path] != those[path]]


def wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@contextlib.contextmanager
def log_on(backend: str, tmp_path: Path):
    """(`ServerProcess` arguments) for a log on SQLite, or on a fresh PostgreSQL schema."""
    if backend == "sqlite":
        yield dict(db=tmp_path / "events.db")
        return
    with schema_for_processes("retention") as url:
        yield dict(db=tmp_path / "replica.db", LLM_METRICS_DB=url,
                   LLM_METRICS_FACTS=str(tmp_path / "replica.facts.duckdb"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_retention_sweeps_exactly_the_old_requests(tmp_path, backend):
    now = datetime.now(timezone.utc)

    def at(minutes_ago: float) -> str:
        return (now - timedelta(minutes=minutes_ago)).isoformat()

    old, recent = [], []
    for i in range(5):
        old += [dict(f.started("old", f"o{i}"), timestamp=at(120)),
                dict(f.completed("old", f"o{i}"), timestamp=at(90), event_id=f"old-c{i}")]
        # Started long ago, finished recently: kept (a request goes by its terminal event).
        recent += [dict(f.started("mixed", f"m{i}"), timestamp=at(120)),
                   dict(f.completed("mixed", f"m{i}"), timestamp=at(1))]
    old.append(dict(f.started("old", "pending"), timestamp=at(61)))      # pending: by its start
    recent.append(dict(f.started("new", "pending"), timestamp=at(2)))
    with log_on(backend, tmp_path) as log:
        sweep_and_restart(log, old, recent, at)


def sweep_and_restart(log: dict, old: list[dict], recent: list[dict], at) -> None:
    with ServerProcess(**log, LLM_METRICS_RETENTION="1h", LLM_METRICS_RETENTION_SWEEP="0.2") as s:
        assert s.request("POST", "/events", old + recent)[0] == 201
        wait_for(lambda: s.request("GET", "/events/metrics")[1]["total_requests"] == 5)
        assert s.request("GET", "/events/metrics/session/old")[0] == 404
        assert len(export(s)) == len(recent)
        # An old retry is a duplicate; an old event never seen is stored, then swept.
        status, body = s.request("POST", "/events", [old[1]])
        assert (status, body["duplicates"]) == (201, 1)
        late = dict(f.started("late", "l1"), timestamp=at(300))
        assert s.request("POST", "/events", [late])[1]["appended"] == 1
        wait_for(lambda: s.request("GET", "/events/metrics/session/late")[0] == 404)
    assert "retention: erased 11 events" in s.log()
    # The first sweep runs before the server answers: nothing old is ever served.
    with ServerProcess(**log, port=s.port, LLM_METRICS_RETENTION="1s") as s:
        body = s.request("GET", "/events/metrics")[1]
        assert (body["total_requests"], body["total_sessions"]) == (0, 0), body
        assert export(s) == []
