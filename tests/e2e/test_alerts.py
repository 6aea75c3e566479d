"""Alerts end to end: a real server process, the real query layer, a real webhook receiver.

Each test posts events, waits for the webhooks a user would expect, and checks that nothing
else arrives: firing and resolved for grouped and ungrouped rules, every window kind against a
small oracle, signatures, retries after 500s, and a kill -9 while a delivery is failing.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from tests import factories as f
from tests.server import ServerProcess
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

SECRET = "hook-secret"
# The bound from an event to its webhook.
WITHIN_S = 5.0


def rule(name: str, url: str, **fields) -> dict:
    return {"name": name, "measure": "total_requests", "op": ">=", "threshold": 2,
            "window": "1h", "webhook_url": url, "secret": SECRET, **fields}


def done(user: str, at: datetime, n: int, model: str = "gpt-4o", failed: bool = False) -> dict:
    """One finished request (known from its terminal event only) at `at`."""
    make = f.failed if failed else f.completed
    event = make(session_id=f"s-{user}", request_id=f"{user}-{n}", model=model, user_id=user,
                 event_id=f"{user}-{n}")
    event["timestamp"] = at.isoformat()
    return event


def post(server: ServerProcess, *events: dict) -> float:
    status, body = server.request("POST", "/events", list(events))
    assert status == 201, body
    server.last_position = body["last_position"]
    return time.monotonic()


def settled(server: ServerProcess, timeout: float = WITHIN_S) -> dict:
    """`GET /alerts` once an evaluation has taken every event posted so far into account, and
    its deliveries have had a moment to leave."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = server.request("GET", "/alerts")
        assert status == 200, body
        if body["position"] >= server.last_position:
            time.sleep(0.3)
            return body
        assert time.monotonic() < deadline, f"no evaluation reached the log's end: {body}"
        time.sleep(0.05)


def states(received) -> list[tuple]:
    return [(r.json["rule"], r.json["state"], r.json["group"], r.json["value"]) for r in received]


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def test_grouped_and_ungrouped_rules_fire_and_resolve_once(tmp_path):
    with Receiver() as hooks, ServerProcess(tmp_path / "events.db") as server:
        assert server.request("POST", "/alerts/rules", rule(
            "busy-user", hooks.url, group_by="user_id", where={"model": ["gpt-4o"]}))[0] == 201
        assert server.request("POST", "/alerts/rules", rule(
            "any-failure", hooks.url, measure="failed_requests", op=">", threshold=0,
            window="5m"))[0] == 201

        sent = post(server, done("alice", T0, 1), done("alice", T0, 2), done("bob", T0, 1),
                    done("bob", T0, 2, model="gpt-4o-mini"))
        (fired,) = hooks.wait_for(1, timeout=WITHIN_S)
        assert fired.at - sent < WITHIN_S
        assert states([fired]) == [("busy-user", "firing", {"user_id": "alice"}, 2.0)]
        assert fired.signature_ok(SECRET) and not fired.signature_ok("not the secret")
        assert fired.json["measure"] == "total_requests" and fired.json["threshold"] == 2
        assert fired.json["window"] == "1h"

        sent = post(server, done("carol", T0 + timedelta(minutes=1), 1, failed=True))
        (failure,) = hooks.wait_for(1, timeout=WITHIN_S, rule="any-failure")
        assert failure.at - sent < WITHIN_S
        assert states([failure]) == [("any-failure", "firing", {}, 1.0)]
        # Alice's third request changes her value, not her state: no second webhook.
        post(server, done("alice", T0 + timedelta(minutes=2), 3))
        body = settled(server)
        assert len(hooks.requests()) == 2
        assert body["evaluated_at"].endswith("Z")
        assert {(a["rule"], tuple(a["group"].items()), a["value"]) for a in body["alerts"]} == {
            ("busy-user", (("user_id", "alice"),), 3.0), ("any-failure", (), 1.0)}

        # Two hours later: both windows have moved past everything but dave's request.
        sent = post(server, done("dave", T0 + timedelta(hours=2), 1))
        resolved = hooks.wait_for(2, timeout=WITHIN_S, state="resolved")
        assert max(r.at for r in resolved) - sent < WITHIN_S
        assert sorted(states(resolved)) == [("any-failure", "resolved", {}, 0.0),
                                            ("busy-user", "resolved", {"user_id": "alice"}, 0.0)]
        assert settled(server)["alerts"] == []
        assert len(hooks.requests()) == 4, "each change is announced exactly once"
        assert all(r.signature_ok(SECRET) for r in hooks.requests())
        assert len({r.delivery_id for r in hooks.requests()}) == 4

        status, log = server.request("GET", "/alerts/deliveries?limit=10")
        assert status == 200
        assert [(d["rule"], d["state"], d["status"], d["attempts"], d["last_status"])
                for d in log["deliveries"]][-1] == ("busy-user", "firing", "delivered", 1, 200)
        assert {d["status"] for d in log["deliveries"]} == {"delivered"}


WINDOWS = {"5m": timedelta(minutes=5), "15m": timedelta(minutes=15), "1h": timedelta(hours=1),
           "6h": timedelta(hours=6), "1d": timedelta(days=1), "7d": timedelta(days=7),
           "30d": timedelta(days=30)}


def oracle_count(window: str, times: list[datetime]) -> int:
    """Requests in the window, written from the issue's words: rolling windows end at the
    newest event time (inclusive), calendar ones are the UTC day or month holding it."""
    newest = max(times)
    if window == "day":
        return sum(t.date() == newest.date() for t in times)
    if window == "month":
        return sum((t.year, t.month) == (newest.year, newest.month) for t in times)
    return sum(newest - WINDOWS[window] < t <= newest for t in times)


def test_every_window_kind_fires_and_resolves_as_its_window_says(tmp_path):
    steps = [datetime(2026, 1, 31, 23, 50, tzinfo=timezone.utc),
             datetime(2026, 2, 1, 0, 3, tzinfo=timezone.utc),
             datetime(2026, 2, 1, 0, 4, tzinfo=timezone.utc),
             datetime(2026, 2, 1, 7, 0, tzinfo=timezone.utc),
             datetime(2026, 2, 9, 0, 0, tzinfo=timezone.utc),
             datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc),
             datetime(2026, 4, 15, 0, 0, tzinfo=timezone.utc)]
    windows = [*WINDOWS, "day", "month"]
    with Receiver() as hooks, ServerProcess(tmp_path / "events.db") as server:
        for window in windows:
            status, body = server.request("POST", "/alerts/rules",
                                          rule(f"w-{window}", hooks.url, window=window))
            assert status == 201, body
        firing = {w: False for w in windows}
        expected = []
        for n, at in enumerate(steps):
            post(server, done("u", at, n))
            for window in windows:
                count = oracle_count(window, steps[:n + 1])
                if (count >= 2) != firing[window]:
                    firing[window] = count >= 2
                    expected.append((f"w-{window}", "firing" if count >= 2 else "resolved",
                                     {}, float(count)))
            settled(server)
            hooks.wait_for(len(expected), timeout=WITHIN_S)
            got = states(hooks.requests())
            assert sorted(got) == sorted(expected), f"after the event at {at}"
        # The sequence makes every window kind fire once and resolve once.
        assert sorted((r, s) for r, s, _, _ in expected) == sorted(
            (f"w-{w}", s) for w in windows for s in ("firing", "resolved"))


def test_a_failing_delivery_survives_kill_9_and_keeps_its_id(tmp_path):
    db = tmp_path / "events.db"
    with Receiver(default=500) as hooks:
        server = ServerProcess(db).start()
        try:
            assert server.request("POST", "/alerts/rules", rule(
                "busy-user", hooks.url, group_by="user_id"))[0] == 201
            post(server, done("alice", T0, 1), done("alice", T0, 2))
            failed = hooks.wait_for(2, timeout=10)  # the first attempt and one retry
            assert [r.answered for r in failed[:2]] == [500, 500]
            status, log = server.request("GET", "/alerts/deliveries")
            (delivery,) = log["deliveries"]
            assert delivery["status"] == "pending" and delivery["last_error"] == "HTTP 500"
        finally:
            server.kill()  # SIGKILL while the delivery is failing

        hooks.answer(then=200)
        before = len(hooks.requests())
        with ServerProcess(db) as server:
            (ok,) = [r for r in hooks.wait_for(before + 1, timeout=10) if r.answered == 200]
            server.last_position = server.request("GET", "/health")[1]["position"]
            settled(server)
            status, log = server.request("GET", "/alerts/deliveries")
            # The state was decided once, before the kill: no second firing after restart.
            (delivery,) = log["deliveries"]
            assert delivery["status"] == "delivered" and delivery["attempts"] >= 3
            assert server.request("GET", "/alerts")[1]["alerts"][0]["group"] == {
                "user_id": "alice"}
    assert {r.delivery_id for r in hooks.requests()} == {delivery["id"]}, \
        "every attempt, before and after the kill, is the same delivery"
    assert states([ok]) == [("busy-user", "firing", {"user_id": "alice"}, 2.0)]
    assert ok.signature_ok(SECRET)


def test_a_slow_receiver_does_not_slow_ingest(tmp_path):
    with Receiver(delay_s=8.0) as hooks, ServerProcess(tmp_path / "events.db") as server:
        assert server.request("POST", "/alerts/rules", rule(
            "busy-user", hooks.url, group_by="user_id"))[0] == 201
        post(server, *(done(f"user{i}", T0, k) for i in range(20) for k in range(2)))
        time.sleep(1.0)  # twenty deliveries are now waiting on the receiver
        slowest = 0.0
        for n in range(20):
            began = time.monotonic()
            post(server, done("zed", T0, 10 + n))
            slowest = max(slowest, time.monotonic() - began)
        assert slowest < 1.0, f"a post took {slowest:.2f} s while webhooks were slow"
        settled(server)
        status, log = server.request("GET", "/alerts/deliveries?limit=100")
        assert status == 200 and len(log["deliveries"]) == 21


def test_on_a_shared_postgresql_log_the_replica_holding_the_rule_alerts(tmp_path):
    """Alerts run on the replica they were created on, over what every replica appends."""
    from tests.postgres import schema_for_processes

    with Receiver() as hooks, schema_for_processes() as url:
        a, b = (ServerProcess(tmp_path / f"{name}.db", LLM_METRICS_DB=url,
                              LLM_METRICS_FACTS=str(tmp_path / f"{name}.facts.duckdb"),
                              LLM_METRICS_ALERTS=str(tmp_path / f"{name}.alerts.db"))
                for name in "ab")
        with a, b:
            assert a.request("POST", "/alerts/rules", rule(
                "busy-user", hooks.url, group_by="user_id"))[0] == 201
            assert b.request("GET", "/alerts/rules")[1] == {"rules": []}
            sent = post(b, done("alice", T0, 1), done("alice", T0, 2))
            (fired,) = hooks.wait_for(1, timeout=WITHIN_S)
            assert fired.at - sent < WITHIN_S
            assert states([fired]) == [("busy-user", "firing", {"user_id": "alice"}, 2.0)]
            a.last_position = b.last_position
            settled(a)
            assert len(hooks.requests()) == 1
