"""Reading the log back as wire events: what `GET /events` (and so export and tail) serves.

Each stored event comes back as the JSON object an application would post, with its `event_id`,
so an export can be posted again as is and is then counted as duplicates: import is idempotent.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from events import codec
from events.records import Erased
from events.store import EventStore
from service import params
from service.problems import ApiError

_encode = msgspec.json.Encoder().encode


class Page(NamedTuple):
    # NDJSON: one wire event per line, each ending in a newline.
    body: bytes
    events: int
    # Position of the last row read (also when the time window filtered it out): the next `after`.
    last_position: int


async def read_page(store: EventStore, after: int, limit: int,
                    start_us: int | None = None, end_us: int | None = None) -> Page:
    """Up to `limit` rows after `after`, keeping those whose event time is in [start, end)."""
    rows = await store.read(after, limit)
    lines = []
    for position, event_id, payload, _recorded_at in rows:
        try:
            record = codec.decode(payload)
        except codec.UndecodableEvent as exc:
            # Skipping would make an export silently incomplete; say where the log is damaged.
            raise ApiError(500, f"the event at position {position} cannot be decoded ({exc}); "
                                "see `python -m service replay --skip-undecodable`") from None
        if type(record) is Erased:
            continue  # a tombstone is the log's own record, not an event to post back
        ts = record.timestamp_us
        if (start_us is not None and ts < start_us) or (end_us is not None and ts >= end_us):
            continue
        lines.append(_encode(codec.to_wire(record, event_id)))
    body = b"\n".join(lines) + b"\n" if lines else b""
    return Page(body, len(lines), rows[-1][0] if rows else after)


parse_time = params.time_param
