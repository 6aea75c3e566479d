"""Wire -> record -> bytes -> record round trips, and the defaults `to_record` fills in."""

from datetime import datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import codec
from events.records import Completed, Failed, Started
from events.schema import LlmRequestCompleted, LlmRequestFailed, LlmRequestStarted

text = st.text(min_size=1, max_size=40)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)),
                               timezone(timedelta(hours=-8))]),
)
counts = st.integers(min_value=0, max_value=2**63 - 1)
millis = st.floats(min_value=0, max_value=1e9, allow_nan=False)
common = dict(session_id=text, request_id=text, model=st.text(max_size=40), timestamp=times,
              user_id=st.none() | text, tags=st.lists(text, max_size=20),
              provider=st.none() | text)
wire_events = st.one_of(
    st.builds(LlmRequestStarted, **common),
    st.builds(LlmRequestCompleted, **common, duration_ms=millis, prompt_tokens=counts,
              completion_tokens=counts, total_tokens=st.none() | counts,
              has_tool_calls=st.booleans(), tool_calls=st.none() | counts,
              time_to_first_token_ms=st.none() | millis, cached_prompt_tokens=st.none() | counts,
              reasoning_tokens=st.none() | counts, finish_reason=st.none() | text,
              cost_usd=st.none() | millis),
    st.builds(LlmRequestFailed, **common, error_type=text, duration_ms=st.none() | millis,
              error_message=st.none() | st.text(max_size=100)),
)


@given(wire_events)
def test_record_survives_the_log(event):
    record = codec.to_record(event)
    assert codec.decode(codec.encode(record)) == record


@given(wire_events)
def test_wire_event_survives_export(event):
    record = codec.to_record(event)
    back = codec.to_wire(record, "e-1")
    assert back.timestamp == event.timestamp  # same instant, now in UTC
    assert back.session_id == event.session_id and back.request_id == event.request_id
    assert codec.to_record(back) == record


def test_total_tokens_defaults_to_prompt_plus_completion():
    event = LlmRequestCompleted(session_id="s", request_id="r", model="m",
                                timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc),
                                duration_ms=5, prompt_tokens=7, completion_tokens=3)
    record = codec.to_record(event)
    assert isinstance(record, Completed) and record.total_tokens == 10
    explicit = msgspec.structs.replace(event, total_tokens=99)
    assert codec.to_record(explicit).total_tokens == 99


def test_tool_call_count_implies_has_tool_calls():
    event = LlmRequestCompleted(session_id="s", request_id="r", model="m",
                                timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc),
                                duration_ms=5, prompt_tokens=1, completion_tokens=1, tool_calls=2)
    assert codec.to_record(event).has_tool_calls is True


def test_timestamps_are_stored_as_utc_microseconds():
    ts = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    event = LlmRequestStarted(session_id="s", request_id="r", model="m", timestamp=ts)
    record = codec.to_record(event)
    assert codec.us_to_timestamp(record.timestamp_us) == ts
    assert codec.us_to_timestamp(record.timestamp_us).tzinfo == timezone.utc


def test_records_are_compact_positional_arrays():
    record = Started("sess", "req", "gpt-4", 1, "u", ("a",))
    assert msgspec.msgpack.decode(codec.encode(record)) == [1, "sess", "req", "gpt-4", 1, "u",
                                                            ["a"], None]


def test_an_older_shorter_record_still_decodes():
    # A Completed written before its optional trailing fields existed.
    old = msgspec.msgpack.encode([2, "s", "r", "m", 5, 1.5, 3, 4, 7])
    assert codec.decode(old) == Completed("s", "r", "m", 5, 1.5, 3, 4, 7, False, None)
    assert codec.decode(old).tags == () and codec.decode(old).cached_prompt_tokens == 0


def test_upcasters_turn_old_records_into_current_ones(monkeypatch):
    class Legacy(msgspec.Struct, tag=99, array_like=True, frozen=True):
        session_id: str
        request_id: str

    monkeypatch.setattr(codec, "_decoder", msgspec.msgpack.Decoder(codec.Record | Legacy))
    monkeypatch.setitem(codec.UPCASTERS, Legacy,
                        lambda old: Failed(old.session_id, old.request_id, "", 0, "Legacy"))
    payload = msgspec.msgpack.encode(Legacy("s", "r"))
    assert codec.decode(payload) == Failed("s", "r", "", 0, "Legacy")


@pytest.mark.parametrize("payload", [b"", b"\xc1", msgspec.msgpack.encode([42, "x"]),
                                     msgspec.msgpack.encode({"type": 1})])
def test_garbage_is_undecodable(payload):
    with pytest.raises(codec.UndecodableEvent):
        codec.decode(payload)
