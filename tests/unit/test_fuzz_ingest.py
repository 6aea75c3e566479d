"""Fuzzing the ingest decoder (hypothesis): whatever the body, `parse_body` returns events that
satisfy the schema and fold into the read models, or raises `ApiError` with a 4xx status and
details that name an event and a JSON path; nothing else escapes (no 500). An accepted event
that cannot be folded would be worse than a 500: stored, it would stop every later startup. Bounded: `FUZZ_EXAMPLES` examples per target (default
300, a few seconds in `make test`); raise it for a longer run, e.g. `FUZZ_EXAMPLES=20000`.
"""

from __future__ import annotations

import json
import os
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import codec
from events.records import Completed
from events.schema import MAX_TOKENS
from service.ingest import EARLIEST_US
import asyncio
import atexit
import tempfile

from projections.engine import Engine
from projections.facts import Facts
from projections.prices import default_prices
from service.ingest import parse_body
from service.problems import ApiError
from tests import factories as f

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CONTENT_TYPES = ["application/json", "application/x-ndjson"]
NOW_US = 1_800_000_000_000_000  # 2027-01-15: fixed, so "in the future" does not depend on today
MAX_COUNT = MAX_TOKENS
# One real facts file for the whole module: every accepted event must apply to it.
_FACTS_DIR = tempfile.TemporaryDirectory()
_ENGINE = Engine.open(f"{_FACTS_DIR.name}/facts.duckdb")
MODELS = asyncio.run(Facts.open(_ENGINE, default_prices()))
atexit.register(_ENGINE.close)
POSITIONS = iter(range(1, 10**9))


def check(body: bytes, content_type: str) -> list:
    """The property every input must satisfy; returns the accepted events (or [])."""
    try:
        events = parse_body(body, content_type, now_us=NOW_US, max_events=1000)
    except ApiError as exc:
        assert exc.status in (400, 413, 415), exc.status
        assert exc.message
        for issue in exc.details:
            assert issue.path.startswith("$"), issue
            assert issue.index >= 0 and issue.message
        return []
    assert events
    for event in events:
        record = codec.decode(event.payload)
        assert record == event.record
        assert 1 <= len(record.session_id) <= 256 and 1 <= len(record.request_id) <= 256
        assert 1 <= len(event.event_id) <= 128
        assert EARLIEST_US <= record.timestamp_us <= NOW_US + 24 * 3600 * 1_000_000
        if type(record) is Completed:
            assert 0 <= record.prompt_tokens <= MAX_COUNT
            assert 0 <= record.completion_tokens <= MAX_COUNT
            assert 0 <= record.duration_ms <= 1e12
            assert 0 <= record.total_tokens <= MAX_COUNT
    asyncio.run(MODELS.apply_rows([(next(POSITIONS), e.record) for e in events]))
    return events


json_scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)
FIELDS = ["type", "session_id", "request_id", "model", "timestamp", "event_id", "duration_ms",
          "prompt_tokens", "completion_tokens", "total_tokens", "has_tool_calls", "tool_calls",
          "error_type", "error_message", "user_id", "tags", "provider", "colour"]
TIMESTAMPS = st.sampled_from([
    "2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "2026-01-01T00:00:00+14:00", "2026-13-01T00:00:00Z",
    "2099-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999-12:00", "",
    "2026-01-01 00:00:00Z", "2026-01-01T00:00:00.123456789Z",
])
VALID = [f.started(), f.completed(), f.failed(), f.completed(has_tool_calls=True, tool_calls=2),
         f.failed(duration_ms=10.5, error_message="boom")]


@st.composite
def mutated_events(draw) -> dict:
    """A valid event with a few fields dropped, retyped, or set to odd values."""
    event = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(["drop", "value", "timestamp", "number", "string"]))
        if action == "drop":
            event.pop(name, None)
        elif action == "value":
            event[name] = draw(json_values)
        elif action == "timestamp":
            event["timestamp"] = draw(TIMESTAMPS)
        elif action == "number":
            event[name] = draw(st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64, 1e308, -0.0, 0.5,
                                                1e12, 1e12 + 1]))
        else:
            event[name] = draw(st.text(alphabet=string.printable + "\x00\u2028\U0001F680",
                                       max_size=300))
    return event


@fuzz
@given(body=st.binary(max_size=600), content_type=st.sampled_from(CONTENT_TYPES))
def test_arbitrary_bytes(body, content_type):
    check(body, content_type)


@fuzz
@given(events=st.lists(mutated_events(), min_size=1, max_size=5),
       shape=st.sampled_from(["one", "array", "ndjson"]))
def test_mutated_events(events, shape):
    if shape == "one":
        body, kind = json.dumps(events[0]).encode(), "application/json"
    elif shape == "array":
        body, kind = json.dumps(events).encode(), "application/json"
    else:
        body, kind = b"\n".join(json.dumps(e).encode() for e in events), "application/x-ndjson"
    accepted = check(body, kind)
    if accepted:
        assert len(accepted) == (1 if shape == "one" else len(events))


@fuzz
@given(event=mutated_events(), cut=st.integers(min_value=0, max_value=400),
       flip=st.integers(min_value=0, max_value=255))
def test_truncated_and_bit_flipped_events(event, cut, flip):
    body = json.dumps(event).encode()
    check(body[:cut], "application/json")
    if body:
        at = cut % len(body)
        check(body[:at] + bytes([body[at] ^ flip]) + body[at + 1:], "application/json")
