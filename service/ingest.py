"""Ingest: turn a request body into events ready to append, or say exactly what is wrong.

Strict by design: everything is validated before anything is stored, and every problem is
reported with the index of the event and the JSON path of the field.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import msgspec

from events import codec
from events.records import Completed, Record
from events.schema import EARLIEST_TIMESTAMP, MAX_TOKENS, WIRE_TYPES, WireEvent
from events.store import Issue, NewEvent, slot_key
from service.problems import ApiError

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
# msgspec raises RecursionError on JSON nested thousands deep; an event is two levels deep.
TOO_DEEP = "JSON nested too deeply"
# An event's time may run ahead of ours by clock skew, not by days.
MAX_FUTURE_US = 24 * 3600 * 1_000_000
EARLIEST_US = codec.timestamp_to_us(EARLIEST_TIMESTAMP)
_EARLIEST_TEXT = EARLIEST_TIMESTAMP.isoformat().replace("+00:00", "Z")

_one = msgspec.json.Decoder(WireEvent)
_many = msgspec.json.Decoder(list[WireEvent])
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_TYPE_NAMES = ", ".join(t.__struct_config__.tag for t in WIRE_TYPES)

# Server-assigned event ids: UUID-4 shaped, a random per-process prefix plus a counter. As unique
# as uuid4() for our purposes and ten times cheaper, which matters at 150k events/s.
_id_prefix = str(uuid.uuid4())[:24]
_id_counter = itertools.count(int.from_bytes(uuid.uuid4().bytes[:4], "big"))


def new_event_id() -> str:
    return f"{_id_prefix}{next(_id_counter) & 0xFFFF_FFFF_FFFF:012x}"


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


# Bodies from this size on are parsed off the event loop; smaller ones cost less than the trip
# to a thread (a single event is about 250 bytes).
OFF_LOOP_BYTES = 64 * 1024
# Events per msgspec call for such bodies: a call holds the GIL (so the loop) until it returns.
SLICE_EVENTS = 1000
_parser: ThreadPoolExecutor | None = None


async def parse_off_loop(body: bytes, content_type: str,
                         max_events: int | None = None) -> list[NewEvent]:
    """`parse_body` without holding the event loop: a big body is parsed in a thread.

    One thread for every request, so several big batches take turns instead of all competing
    with the loop for the GIL; within it, JSON arrays are decoded in slices of `SLICE_EVENTS`
    and the Python parts give the GIL back every few milliseconds anyway.
    """
    global _parser
    if len(body) < OFF_LOOP_BYTES:
        return parse_body(body, content_type, max_events=max_events)
    if _parser is None:
        _parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-parse")
    return await asyncio.get_running_loop().run_in_executor(
        _parser, functools.partial(parse_body, body, content_type, max_events=max_events))


def parse_body(body: bytes, content_type: str, now_us: int | None = None,
               max_events: int | None = None) -> list[NewEvent]:
    """Decode and validate a body of one event, a JSON array, or NDJSON (at most `max_events`)."""
    kind = media_type(content_type)
    if kind not in JSON_TYPES and kind not in NDJSON_TYPES:
        raise ApiError(
            415,
            f"unsupported content-type {content_type or '(none)'!r}: send application/json "
            "(one event or an array) or application/x-ndjson (one event per line)",
        )
    if not body.strip():
        raise ApiError(400, "empty body: send one event, an array of events, or NDJSON")
    if kind in NDJSON_TYPES:
        events = _decode_lines(body, max_events)
    else:
        events = _decode_json(body, max_events)
    if not events:
        raise ApiError(400, "no events in the body")
    _check_count(len(events), max_events)
    return prepare(events, now_us)


def _check_count(count: int, max_events: int | None, exact: bool = True) -> None:
    # Checked before invalid items are decoded one by one: a 10 MiB body of five million `1`s
    # would otherwise cost minutes of CPU and an answer listing five million problems.
    if max_events is not None and count > max_events:
        found = f"{count} events" if exact else "more events"
        raise ApiError(413, f"{found} in one request than the limit of {max_events}: split the "
                            "batch",
                       [Issue(max_events, f"$[{max_events}]", "first event over the limit")])


def prepare(events: list[WireEvent], now_us: int | None = None) -> list[NewEvent]:
    """Check what the schema cannot, assign missing event ids and encode the records."""
    latest = (time.time_ns() // 1000 if now_us is None else now_us) + MAX_FUTURE_US
    issues = []
    prepared = []
    for index, event in enumerate(events):
        record = codec.to_record(event)
        problem = _inconsistency(record, latest)
        if problem is not None:
            issues.append(Issue(index, *problem))
            continue
        prepared.append(
            NewEvent(
                event.event_id or new_event_id(),
                codec.TYPE_CODES[type(record)],
                codec.encode(record),
                slot_key(record),
                record,
            )
        )
    if issues:
        raise _invalid(issues, len(events))
    return prepared


def _inconsistency(record: Record, latest_us: int) -> tuple[str, str] | None:
    """The first rule a schema cannot express that `record` breaks, as (path, message)."""
    if record.timestamp_us > latest_us:
        return "$.timestamp", "timestamp is more than a day in the future"
    if record.timestamp_us < EARLIEST_US:
        return "$.timestamp", f"timestamp is before {_EARLIEST_TEXT}"
    if type(record) is Completed:
        # The schema bounds each count; the default total (prompt + completion) can still pass
        # the bound every sum is sized for.
        if record.total_tokens > MAX_TOKENS:
            return "$.completion_tokens", ("prompt_tokens + completion_tokens (the default "
                                           f"total_tokens) is more than {MAX_TOKENS}")
        if record.cached_prompt_tokens > record.prompt_tokens:
            return "$.cached_prompt_tokens", "cached_prompt_tokens is part of prompt_tokens and " \
                                             "cannot exceed it"
        if record.cached_prompt_tokens + record.cache_write_prompt_tokens > record.prompt_tokens:
            return "$.cache_write_prompt_tokens", "cached_prompt_tokens + " \
                "cache_write_prompt_tokens are parts of prompt_tokens and cannot exceed it"
        if record.reasoning_tokens > record.completion_tokens:
            return "$.reasoning_tokens", "reasoning_tokens is part of completion_tokens and " \
                                         "cannot exceed it"
        ttft = record.time_to_first_token_ms
        if ttft is not None and ttft > record.duration_ms:
            return "$.time_to_first_token_ms", "time_to_first_token_ms cannot exceed duration_ms"
    return None


def _decode_json(body: bytes, max_events: int | None = None) -> list[WireEvent]:
    start = body.lstrip()[:1]
    try:
        if start == b"[" and len(body) >= OFF_LOOP_BYTES:
            items = _raw_list.decode(body)
            _check_count(len(items), max_events)
            return _decode_slices(items)
        if start == b"[":
            try:
                return _many.decode(body)
            except msgspec.ValidationError:
                items = _raw_list.decode(body)  # well-formed; find every invalid item
                _check_count(len(items), max_events)
                return _decode_items(list(enumerate(items)), len(items))
        return _decode_items([(0, body)], 1)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON: {_plain(exc)}") from None
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply", [Issue(0, "$", TOO_DEEP)]) from None


def _decode_slices(items: list[msgspec.Raw]) -> list[WireEvent]:
    """The items of a well-formed array, `SLICE_EVENTS` per decoder call; a slice that fails is
    decoded item by item so that every invalid event is named."""
    events, issues = [], []
    for start in range(0, len(items), SLICE_EVENTS):
        piece = items[start:start + SLICE_EVENTS]
        try:
            events.extend(_many.decode(b"[" + b",".join(piece) + b"]"))
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            for index, raw in enumerate(piece, start):
                try:
                    events.append(_decode_item(index, raw))
                except _ItemError as exc:
                    issues.append(exc.issue)
    if issues:
        raise _invalid(issues, len(items))
    return events


def _decode_lines(body: bytes, max_events: int | None = None) -> list[WireEvent]:
    if max_events is not None and body.count(b"\n") >= max_events:
        # Maybe too many lines: count them, up to one past the limit, without splitting
        # millions of them out first.
        found = sum(1 for _ in itertools.islice(_LINE.finditer(body), max_events + 1))
        _check_count(found, max_events, exact=False)
    lines = [(i, line) for i, line in enumerate(body.split(b"\n")) if line.strip()]
    return _decode_items(lines, len(lines))


_LINE = re.compile(rb"[^\n]*[^\s][^\n]*")


def _decode_items(items: list[tuple[int, bytes]], total: int) -> list[WireEvent]:
    events, issues = [], []
    for index, raw in items:
        try:
            events.append(_decode_item(index, raw))
        except _ItemError as exc:
            issues.append(exc.issue)
    if issues:
        raise _invalid(issues, total)
    return events


class _ItemError(Exception):
    def __init__(self, issue: Issue):
        self.issue = issue


def _decode_item(index: int, raw: bytes) -> WireEvent:
    try:
        return _one.decode(raw)
    except msgspec.ValidationError as exc:
        raise _ItemError(_issue(index, str(exc))) from None
    except msgspec.DecodeError as exc:
        raise _ItemError(Issue(index, "$", f"malformed JSON: {_plain(exc)}")) from None
    except UnicodeDecodeError as exc:
        raise _ItemError(Issue(index, "$", f"not valid UTF-8 (byte {exc.start})")) from None
    except RecursionError:
        raise _ItemError(Issue(index, "$", TOO_DEEP)) from None


_AT = re.compile(r"^(?P<message>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.S)
_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<field>[^`]*)`")


def _issue(index: int, text: str) -> Issue:
    """Turn msgspec's 'Expected `int`, got `str` - at `$.prompt_tokens`' into an Issue."""
    m = _AT.match(text)
    message, path = m["message"], m["path"] or "$"
    field = _FIELD.match(message)
    if field:
        path = f"{path}.{field['field']}"
        if "unknown" in message:
            message = f"unknown field `{field['field']}` for this event type"
        else:
            message = f"missing required field `{field['field']}`"
    if path.endswith(".type") and message.startswith("Invalid value"):
        message = f"{message}: unknown event type (expected one of {_TYPE_NAMES})"
    return Issue(index, path, message)


def _plain(exc: Exception) -> str:
    return str(exc).removeprefix("JSON is malformed: ")


# Enough to fix a batch by; a longer list only makes the answer as big as the request.
MAX_DETAILS = 100


def _invalid(issues: list[Issue], total: int) -> ApiError:
    what = "event is" if len(issues) == 1 else "events are"
    first = issues[0]
    listed = "" if len(issues) <= MAX_DETAILS else f" (the first {MAX_DETAILS} are listed)"
    return ApiError(
        400,
        f"{len(issues)} of {total} {what} invalid, nothing was stored{listed}; first: event "
        f"{first.index}, {first.path}: {first.message}",
        issues[:MAX_DETAILS],
    )
