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

import hashlib
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


class Erased(msgspec.Struct, frozen=True, array_like=True, gc=False, tag=4):
    """A tombstone: the events at `positions` were erased from the log (docs/event-log.md).

    It holds no personal data: `scope` says why (`session`, `user`, `retention`), `key_hash`
    is `erasure_key(scope, id)` (empty for retention) and `count` how many rows went.
    Read models delete what they derived from those positions.
    """

    positions: tuple[int, ...]
    scope: str
    key_hash: str
    count: int
    erased_at_us: int


def erasure_key(scope: str, identifier: str) -> str:
    """The hash a tombstone keeps of the erased id: enough to tell two erasures of one id
    apart from others, not to read the id back."""
    return hashlib.blake2b(f"{scope}\x00{identifier}".encode("utf-8", "surrogatepass"),
                           digest_size=16).hexdigest()


def erased_id_hash(event_id: str) -> bytes:
    """What the log keeps of an erased event's id, so that re-posting it is a duplicate."""
    return hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=16,
                           person=b"erased-event-id").digest()


Record = Union[Started, Completed, Failed, Erased]
# What applications post; `Erased` is written by the log itself.
EVENT_RECORDS: tuple[type, ...] = (Started, Completed, Failed)
TERMINAL_RECORDS: tuple[type, ...] = (Completed, Failed)
