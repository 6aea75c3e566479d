"""What the event log stores: one compact, positional record per event.

Records are msgpack arrays (`array_like`) tagged with a small integer, which makes a stored
event about three times smaller and faster to decode than the JSON object it came from. The tag
doubles as the schema version of the record:

- a compatible change (a new optional field) is appended at the *end* of a record, with a
  default, so older, shorter arrays still decode;
- an incompatible change gets a new tag and an upcaster in `events.codec` that turns the old
  record into the new one on read. The log is never rewritten.

Optional fields every event has (`user_id`, `tags`, `provider`) sit at the end of each record
rather than in the base: in an array, a base field would come before the subclass's required
fields and shift every position after it. An absent optional value costs one byte.

Projections fold these records; they never see the wire format.
"""

from __future__ import annotations

from typing import Union

import msgspec


class _Record(msgspec.Struct, frozen=True, array_like=True, gc=False):
    session_id: str
    request_id: str
    model: str
    # Event time in integer microseconds since the Unix epoch (UTC): exact and cheap to compare.
    timestamp_us: int


class Started(_Record, tag=1):
    """The request was sent (`LLM_REQUEST_STARTED`)."""

    user_id: str | None = None
    tags: tuple[str, ...] = ()
    provider: str | None = None


class Completed(_Record, tag=2):
    """The request succeeded (`LLM_REQUEST_COMPLETED`)."""

    duration_ms: float
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    has_tool_calls: bool = False
    tool_calls: int | None = None
    time_to_first_token_ms: float | None = None
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: str | None = None
    cost_usd: float | None = None
    user_id: str | None = None
    tags: tuple[str, ...] = ()
    provider: str | None = None
    cache_write_prompt_tokens: int = 0


class Failed(_Record, tag=3):
    """The request failed (`LLM_REQUEST_FAILED`)."""

    error_type: str
    duration_ms: float | None = None
    error_message: str | None = None
    user_id: str | None = None
    tags: tuple[str, ...] = ()
    provider: str | None = None


Record = Union[Started, Completed, Failed]
TERMINAL_RECORDS: tuple[type, ...] = (Completed, Failed)
