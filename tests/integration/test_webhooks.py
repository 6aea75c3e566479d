"""The outbox and its deliverer against a real receiver: a real SQLite alert file, real HTTP.

No query layer here: state changes are recorded as the evaluator records them (`announce` +
`AlertStore.record`), and the deliverer must get each one to the receiver at least once, signed,
with one id for all its attempts, in the order of its group's changes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3

import msgspec
import pytest

from service import webhooks
from service.alerts.evaluator import announce
from service.alerts.rules import parse_rule
from service.alerts.store import AlertStore, State
from service.webhooks import Deliverer, now_us
from tests.webhook_receiver import Receiver

SECRET = "s3cret"


def make_rule(url: str, **fields):
    body = {"name": "alice-daily", "measure": "total_cost_usd", "op": ">", "threshold": 5,
            "window": "1d", "group_by": "user_id", "webhook_url": url, "secret": SECRET,
            **fields}
    return parse_rule(json.dumps(body).encode())


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
async def store(tmp_path):
    store = await AlertStore.open(tmp_path / "alerts.db")
    yield store
    await store.close()


async def change(store: AlertStore, rule, state: str, value: float, user: str = "alice"):
    now = now_us()
    made = announce(rule, State(rule.name, {"user_id": user}, state, now, value), now)
    assert await store.record(rule.name, [made], [], now)
    return made


async def delivered(store: AlertStore, count: int, timeout: float = 15.0):
    for _ in range(int(timeout / 0.05)):
        done = [d for d in await store.deliveries(100) if d.status != "pending"]
        if len(done) >= count:
            return done
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} finished deliveries, got {await store.deliveries(100)}")


async def test_a_change_is_posted_once_signed_with_the_rules_secret(store, receiver):
    rule = make_rule(receiver.url)
    await store.add_rule(rule, now_us())
    made = await change(store, rule, "firing", 7.5)
    deliverer = Deliverer(store)
    await deliverer.start()
    try:
        (got,) = await receiver.until(1)
        await delivered(store, 1)
        await asyncio.sleep(1.0)
        assert len(receiver.requests()) == 1, "a delivered change is not sent again"
    finally:
        await deliverer.close()
    assert got.signature_ok(SECRET)
    assert not got.signature_ok("another secret")
    assert got.delivery_id == made.delivery_id
    assert got.headers["Content-Type"] == "application/json"
    body = got.json
    assert {k: body[k] for k in ("rule", "state", "group", "measure", "value", "threshold",
                                 "window")} == {
        "rule": "alice-daily", "state": "firing", "group": {"user_id": "alice"},
        "measure": "total_cost_usd", "value": 7.5, "threshold": 5.0, "window": "1d"}
    assert body["at"].endswith("Z")
    (log,) = await store.deliveries(10)
    assert (log.status, log.attempts, log.last_status, log.last_error) == ("delivered", 1, 200, None)


async def test_500s_are_retried_with_backoff_under_the_same_delivery_id(store, receiver):
    rule = make_rule(receiver.url)
    await store.add_rule(rule, now_us())
    made = await change(store, rule, "firing", 9)
    receiver.answer(500, 503, then=200)
    deliverer = Deliverer(store)
    await deliverer.start()
    try:
        got = await receiver.until(3, timeout=20)
        await delivered(store, 1)
    finally:
        await deliverer.close()
    assert [r.answered for r in got] == [500, 503, 200]
    assert {r.delivery_id for r in got} == {made.delivery_id}
    assert {r.body for r in got} == {got[0].body}, "every attempt sends the same bytes"
    # Backoff: 1 s then 2 s, each times a jitter factor in [0.5, 1.5).
    gaps = [b.at - a.at for a, b in zip(got, got[1:])]
    assert gaps[0] >= 0.5 * webhooks.FIRST_RETRY_S - 0.05
    assert gaps[1] >= 1.0 * webhooks.FIRST_RETRY_S - 0.05
    (log,) = await store.deliveries(10)
    assert (log.status, log.attempts, log.last_status) == ("delivered", 3, 200)


async def test_a_groups_changes_arrive_in_order_even_when_the_first_is_retried(store, receiver):
    rule = make_rule(receiver.url)
    await store.add_rule(rule, now_us())
    await change(store, rule, "firing", 9)
    await change(store, rule, "resolved", 1)
    await change(store, rule, "firing", 8, user="bob")
    receiver.answer(500, then=200)
    deliverer = Deliverer(store)
    await deliverer.start()
    try:
        await receiver.until(4)
        await delivered(store, 3)
    finally:
        await deliverer.close()
    alice = [(r.json["state"], r.answered) for r in receiver.requests()
             if r.json["group"] == {"user_id": "alice"}]
    assert alice == [("firing", 500), ("firing", 200), ("resolved", 200)]


async def test_pending_deliveries_survive_a_restart_with_their_id(tmp_path, receiver):
    path = tmp_path / "alerts.db"
    store = await AlertStore.open(path)
    rule = make_rule(receiver.url)
    await store.add_rule(rule, now_us())
    made = await change(store, rule, "firing", 6)
    receiver.answer(then=500)
    deliverer = Deliverer(store)
    await deliverer.start()
    await receiver.until(1)
    await deliverer.close()
    await store.close()

    receiver.answer(then=200)
    store = await AlertStore.open(path)
    deliverer = Deliverer(store)
    await deliverer.start()
    try:
        await delivered(store, 1)
    finally:
        await deliverer.close()
        await store.close()
    ids = [r.delivery_id for r in receiver.requests()]
    assert set(ids) == {made.delivery_id} and len(ids) >= 2
    assert receiver.requests()[-1].answered == 200


async def test_a_delivery_is_given_up_after_its_retry_window(store, receiver, monkeypatch):
    monkeypatch.setattr(webhooks, "GIVE_UP_AFTER_S", 0.2)
    rule = make_rule(receiver.url)
    await store.add_rule(rule, now_us())
    await change(store, rule, "firing", 6)
    receiver.answer(then=500)
    deliverer = Deliverer(store)
    await deliverer.start()
    try:
        (log,) = await delivered(store, 1)
        await asyncio.sleep(1.0)
    finally:
        await deliverer.close()
    assert (log.status, log.last_status, log.last_error) == ("failed", 500, "HTTP 500")
    assert len(receiver.requests()) == 1


async def test_an_unreachable_receiver_is_retried_and_the_error_logged(store, receiver):
    rule = make_rule("http://127.0.0.1:9/hook")  # the discard port: nothing listens
    await store.add_rule(rule, now_us())
    await change(store, rule, "firing", 6)
    deliverer = Deliverer(store)
    await deliverer.start()
    try:
        for _ in range(100):
            (log,) = await store.deliveries(10)
            if log.attempts:
                break
            await asyncio.sleep(0.05)
    finally:
        await deliverer.close()
    assert (log.status, log.attempts, log.last_status) == ("pending", 1, None)
    assert "Connect" in log.last_error
    assert log.next_us > now_us()


async def test_deleting_a_rule_cancels_its_pending_deliveries(store, receiver):
    rule = make_rule(receiver.url)
    await store.add_rule(rule, now_us())
    await change(store, rule, "firing", 6)
    assert await store.delete_rule(rule.name, now_us())
    deliverer = Deliverer(store)
    await deliverer.start()
    await asyncio.sleep(0.5)
    await deliverer.close()
    assert receiver.requests() == []
    (log,) = await store.deliveries(10)
    assert log.status == "cancelled"
    assert await store.states(rule.name) == []
    made = announce(rule, State(rule.name, {}, "firing", 1, 1.0), 1)
    assert not await store.record(rule.name, [made], [], 1), "a deleted rule records nothing"


async def test_slack_format_is_a_text_message(store, receiver):
    rule = make_rule(receiver.url, format="slack")
    await store.add_rule(rule, now_us())
    await change(store, rule, "firing", 6.25)
    deliverer = Deliverer(store)
    await deliverer.start()
    try:
        (got,) = await receiver.until(1)
    finally:
        await deliverer.close()
    assert list(got.json) == ["text"]
    assert "alice-daily" in got.json["text"] and "user_id=alice" in got.json["text"]
    assert "firing" in got.json["text"] and "6.25" in got.json["text"]
    assert got.signature_ok(SECRET)


async def test_rules_survive_reopening_and_names_are_unique(tmp_path):
    path = tmp_path / "alerts.db"
    store = await AlertStore.open(path)
    rule = make_rule("http://127.0.0.1:1/hook")
    assert await store.add_rule(rule, 123)
    assert not await store.add_rule(make_rule("http://127.0.0.1:2/hook"), 456)
    await store.close()
    store = await AlertStore.open(path)
    try:
        assert await store.rules() == [(rule, 123)]
    finally:
        await store.close()


async def test_a_stored_rule_this_version_cannot_read_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "alerts.db"
    store = await AlertStore.open(path)
    good = make_rule("http://127.0.0.1:1/hook")
    await store.add_rule(good, 1)
    await store.close()
    with sqlite3.connect(path) as conn:  # as an older version with another measure wrote it
        body = json.dumps({**json.loads(msgspec.json.encode(good)), "name": "old",
                           "measure": "a_measure_since_removed"})
        conn.execute("INSERT INTO rules VALUES ('old', ?, 2)", (body.encode(),))
    store = await AlertStore.open(path)
    try:
        assert await store.rules() == [(good, 1)]
        assert await store.rule("old") is None
        assert await store.delete_rule("old", 3)
    finally:
        await store.close()
