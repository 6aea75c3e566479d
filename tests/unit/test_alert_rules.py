"""Alert rules: validation names the field, windows are placed right, and the state machine
announces each change of a group exactly once (a property test against a small oracle)."""

from __future__ import annotations

import json
import operator
from datetime import datetime, timezone

import pytest
from hypothesis import example, given, settings, strategies as st

from events import codec
from service.alerts.evaluator import decide
from service.alerts.rules import RuleError, is_satisfied, parse_rule, window_range
from service.alerts.store import State, group_key

VALID = {"name": "alice-daily", "measure": "total_cost_usd", "op": ">", "threshold": 5,
         "window": "1d", "group_by": "user_id", "where": {"model": ["gpt-4o"]},
         "webhook_url": "http://127.0.0.1:9999/hook", "secret": "s3cret", "format": "json"}


def rule_with(**changes):
    body = {**VALID, **changes}
    return parse_rule(json.dumps({k: v for k, v in body.items() if v is not ...}).encode())


def us(text: str) -> int:
    return codec.timestamp_to_us(datetime.fromisoformat(text))


def test_the_issues_example_is_valid_and_shown_without_its_secret():
    rule = rule_with()
    assert rule.threshold == 5.0 and rule.where == {"model": ["gpt-4o"]}
    shown = rule.public()
    assert "secret" not in shown and shown["has_secret"] is True
    assert rule_with(secret=..., group_by=..., where=..., format=...).public()["has_secret"] is False


@pytest.mark.parametrize("changes, field", [
    ({"name": ""}, "$.name"),
    ({"name": "a/b"}, "$.name"),
    ({"name": ...}, "$.name"),
    ({"measure": "cost"}, "$.measure"),
    ({"measure": ...}, "$.measure"),
    ({"op": "=="}, "$.op"),
    ({"threshold": "5"}, "$.threshold"),
    ({"threshold": ...}, "$.threshold"),
    ({"window": "2d"}, "$.window"),
    ({"window": ...}, "$.window"),
    ({"group_by": "colour"}, "$.group_by"),
    ({"group_by": ["user_id"]}, "$.group_by"),
    ({"where": {"colour": ["red"]}}, "$.where.colour"),
    ({"where": {"model": []}}, "$.where.model"),
    ({"where": {"model": "gpt-4o"}}, "$.where.model"),
    ({"where": {"model": ["gpt-4o"], "tag": ["x" * 257]}}, "$.where.tag"),
    ({"webhook_url": "ftp://example.com/x"}, "$.webhook_url"),
    ({"webhook_url": "/hook"}, "$.webhook_url"),
    ({"webhook_url": ...}, "$.webhook_url"),
    ({"secret": ""}, "$.secret"),
    ({"format": "xml"}, "$.format"),
    ({"colour": "red"}, "$.colour"),
])
def test_an_invalid_rule_names_its_field(changes, field):
    with pytest.raises(RuleError) as raised:
        rule_with(**changes)
    assert raised.value.field == field, raised.value.message


@pytest.mark.parametrize("body", [b"", b"[1]", b"not json", b'"rule"'])
def test_a_body_that_is_no_object_is_refused(body):
    with pytest.raises(RuleError) as raised:
        parse_rule(body)
    assert raised.value.field == "$"


@pytest.mark.parametrize("window, newest, start, end", [
    ("5m", "2026-11-27T10:00:00+00:00", "2026-11-27T09:55:00.000001+00:00",
     "2026-11-27T10:00:00.000001+00:00"),
    ("1d", "2026-11-27T10:00:00+00:00", "2026-11-26T10:00:00.000001+00:00",
     "2026-11-27T10:00:00.000001+00:00"),
    ("30d", "2026-11-27T10:00:00+00:00", "2026-10-28T10:00:00.000001+00:00",
     "2026-11-27T10:00:00.000001+00:00"),
    ("day", "2026-11-27T23:59:59+00:00", "2026-11-27T00:00:00+00:00", "2026-11-28T00:00:00+00:00"),
    ("day", "2026-11-28T00:00:00+00:00", "2026-11-28T00:00:00+00:00", "2026-11-29T00:00:00+00:00"),
    ("month", "2026-11-27T10:00:00+00:00", "2026-11-01T00:00:00+00:00",
     "2026-12-01T00:00:00+00:00"),
    ("month", "2026-12-31T23:00:00+00:00", "2026-12-01T00:00:00+00:00",
     "2027-01-01T00:00:00+00:00"),
])
def test_windows_hold_the_newest_event(window, newest, start, end):
    assert window_range(window, us(newest)) == (us(start), us(end))


@given(st.sampled_from(["5m", "15m", "1h", "6h", "1d", "7d", "30d", "day", "month"]),
       st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.just(timezone.utc)))
def test_every_window_contains_the_newest_event_time(window, newest):
    low, high = window_range(window, codec.timestamp_to_us(newest))
    assert low <= codec.timestamp_to_us(newest) < high


def test_an_undefined_value_never_fires():
    assert not is_satisfied(rule_with(op="<"), None)
    assert is_satisfied(rule_with(op="<="), 5) and not is_satisfied(rule_with(op="<"), 5)
    assert is_satisfied(rule_with(op=">="), 5) and not is_satisfied(rule_with(op=">"), 5)


# An evaluation: the groups the answer lists, with their values (None: undefined).
evaluations = st.lists(
    st.dictionaries(st.sampled_from(["alice", "bob", "carol"]),
                    st.one_of(st.none(), st.integers(0, 10).map(float)), max_size=3),
    max_size=12)


ORACLE_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@settings(max_examples=300)
@given(evaluations, st.sampled_from([">", ">=", "<", "<="]),
       st.sampled_from(["total_cost_usd", "duration_ms_p95"]))
@example([{"alice": 9.0}, {"alice": 9.0}, {}, {}], ">", "total_cost_usd")
@example([{"alice": 1.0}, {}, {"alice": None}], "<", "duration_ms_p95")
def test_each_change_of_a_group_is_announced_once(runs, op, measure):
    """Oracle: a group starts not firing; at each evaluation it fires iff its value satisfies
    the rule, the value being the listed one or, for a group that has fired before and is not
    listed, 0 for a sum and undefined for a percentile. A change is due exactly when that flips."""
    rule = rule_with(op=op, measure=measure)
    states: dict[str, State] = {}
    firing: dict[str, bool] = {}
    for step, listed in enumerate(runs):
        observed = {group_key({"user_id": u}): ({"user_id": u}, v) for u, v in listed.items()}
        changed, revalued = decide(rule, list(states.values()), observed, now_us=step)

        expected = []
        for user in sorted(set(firing) | set(listed)):
            value = listed[user] if user in listed else (0.0 if measure == "total_cost_usd"
                                                         else None)
            fires = value is not None and ORACLE_OPS[op](value, 5)
            if fires != firing.get(user, False):
                expected.append((user, "firing" if fires else "resolved", value))
            if fires or user in firing:
                firing[user] = fires

        assert sorted((s.group["user_id"], s.state, s.value) for s in changed) == expected
        for s in changed:
            assert s.since_us == step
            states[s.group["user_id"]] = s
        for s in revalued:
            previous = states[s.group["user_id"]]
            assert (s.state, s.since_us) == (previous.state, previous.since_us)
            assert s.value != previous.value
            states[s.group["user_id"]] = s


def test_an_ungrouped_rule_watches_one_group():
    rule = rule_with(group_by=..., op="<", threshold=3, measure="total_requests")
    changed, _ = decide(rule, [], {"{}": ({}, 1.0)}, now_us=1)
    assert [(s.group, s.state) for s in changed] == [({}, "firing")]
    changed, _ = decide(rule, changed, {"{}": ({}, 4.0)}, now_us=2)
    assert [(s.group, s.state, s.since_us) for s in changed] == [({}, "resolved", 2)]
