"""Translation between the wire format, log records and the bytes in the log.

One encoder and one decoder, built once at import. `decode` is tolerant of old records (see
`events.records` for the versioning rules); `to_record` is the only way a wire event enters the
log, so the rules that fill in defaults live here and nowhere else.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Callable

import msgspec

from events.records import Completed, Erased, Failed, Record, Started
from events.schema import LlmRequestCompleted, LlmRequestFailed, LlmRequestStarted, WireEvent

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)

# Old record type -> function returning the current record. Empty until a record changes shape.
UPCASTERS: dict[type, Callable[[Record], Record]] = {}

TYPE_NAMES: dict[type, str] = {
    Started: "LLM_REQUEST_STARTED",
    Completed: "LLM_REQUEST_COMPLETED",
    Failed: "LLM_REQUEST_FAILED",
    Erased: "ERASED",
}
TYPE_CODES: dict[type, int] = {Started: 1, Completed: 2, Failed: 3, Erased: 4}


class UndecodableEvent(Exception):
    """A stored payload that no known record version can read."""


def timestamp_to_us(ts: datetime) -> int:
    return (ts - _EPOCH) // _MICROSECOND


_MIN_US = timestamp_to_us(datetime.min.replace(tzinfo=timezone.utc))
_MAX_US = timestamp_to_us(datetime.max.replace(tzinfo=timezone.utc))


def us_to_timestamp(us: int) -> datetime:
    """The UTC time of `us`, clamped to what `datetime` holds (0001-01-01 .. 9999-12-31).

    Ingest refuses times before `schema.EARLIEST_TIMESTAMP`, but older versions stored any
    time, `0001-01-01T00:00:00+01:00` (year 0 in UTC) included: the log is never rewritten,
    so every reader must survive such a record rather than fail on it forever.
    """
    return _EPOCH + timedelta(microseconds=min(max(us, _MIN_US), _MAX_US))


def to_record(event: WireEvent) -> Record:
    """The log record for a validated wire event (defaults filled in, time made UTC)."""
    ts = timestamp_to_us(event.timestamp)
    tags = tuple(event.tags)
    if type(event) is LlmRequestCompleted:
        total = event.total_tokens
        if total is None:
            total = event.prompt_tokens + event.completion_tokens
        return Completed(
            event.session_id,
            event.request_id,
            event.model,
            ts,
            float(event.duration_ms),
            event.prompt_tokens,
            event.completion_tokens,
            total,
            event.has_tool_calls or bool(event.tool_calls),
            event.tool_calls,
            None if event.time_to_first_token_ms is None else float(event.time_to_first_token_ms),
            event.cached_prompt_tokens or 0,
            event.reasoning_tokens or 0,
            event.finish_reason,
            None if event.cost_usd is None else float(event.cost_usd),
            event.user_id,
            tags,
            event.provider,
            event.cache_write_prompt_tokens or 0,
        )
    if type(event) is LlmRequestFailed:
        return Failed(
            event.session_id,
            event.request_id,
            event.model,
            ts,
            event.error_type,
            None if event.duration_ms is None else float(event.duration_ms),
            event.error_message,
            event.user_id,
            tags,
            event.provider,
        )
    return Started(event.session_id, event.request_id, event.model, ts, event.user_id, tags,
                   event.provider)


def to_wire(record: Record, event_id: str) -> WireEvent:
    """The wire event for a stored record (for export; time comes back in UTC)."""
    common = dict(
        session_id=record.session_id,
        request_id=record.request_id,
        model=record.model,
        timestamp=us_to_timestamp(record.timestamp_us),
        event_id=event_id,
        user_id=record.user_id,
        tags=list(record.tags),
        provider=record.provider,
    )
    if type(record) is Completed:
        return LlmRequestCompleted(
            **common,
            duration_ms=record.duration_ms,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            total_tokens=record.total_tokens,
            has_tool_calls=record.has_tool_calls,
            tool_calls=record.tool_calls,
            time_to_first_token_ms=record.time_to_first_token_ms,
            cached_prompt_tokens=record.cached_prompt_tokens or None,
            reasoning_tokens=record.reasoning_tokens or None,
            finish_reason=record.finish_reason,
            cost_usd=record.cost_usd,
            cache_write_prompt_tokens=record.cache_write_prompt_tokens or None,
        )
    if type(record) is Failed:
        return LlmRequestFailed(
            **common,
            error_type=record.error_type,
            duration_ms=record.duration_ms,
            error_message=record.error_message,
        )
    return LlmRequestStarted(**common)


def encode(record: Record) -> bytes:
    return _encoder.encode(record)


def decode(payload: bytes) -> Record:
    """The current record for a stored payload; raises `UndecodableEvent`."""
    try:
        record = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UndecodableEvent(str(exc)) from exc
    upcast = UPCASTERS.get(type(record))
    return record if upcast is None else upcast(record)
