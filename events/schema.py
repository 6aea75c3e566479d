"""The public wire format: what applications post to `POST /events`.

These Structs are strict on purpose (unknown fields, wrong types and out-of-range values are
rejected with the path of the offending field). What the log stores is `events.records`; the
two are kept apart so the wire can stay readable JSON while the log stays compact.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Union

import msgspec
from msgspec import Meta

Id = Annotated[str, Meta(min_length=1, max_length=256)]
EventId = Annotated[str, Meta(min_length=1, max_length=128)]
ModelName = Annotated[str, Meta(max_length=256)]
Timestamp = Annotated[datetime, Meta(tz=True)]
# No LLM request happened before it: an earlier time is a client's zero or default date, and
# one year-0001 event would stretch every time range (and overflowed `datetime` on read).
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=timezone.utc)
# Ten billion tokens, a thousand times the largest context window. Any count up to 2**63 - 1
# used to pass and then broke every sum and snapshot; at this bound a 64-bit sum holds a billion
# such requests, and one request's cost in pico-dollars fits 64 bits at every shipped price.
MAX_TOKENS = 10**10
Count = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
# Bounded so every accepted duration folds (ms -> integer us) without overflow: an event that
# is stored but cannot be replayed would stop every later startup. 10^12 ms is 31 years.
Millis = Annotated[float, Meta(ge=0, le=1e12)]
ErrorType = Annotated[str, Meta(min_length=1, max_length=256)]
ErrorMessage = Annotated[str, Meta(max_length=4096)]
Label = Annotated[str, Meta(max_length=256)]
Tags = Annotated[list[Label], Meta(max_length=20)]


class _WireEvent(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="type",
    # Never part of a reference cycle; untracked, a 100k-event batch does not make the cyclic
    # collector walk 100k more objects (a pause for the whole process, event loop included).
    gc=False,
):
    session_id: Id
    request_id: Id
    model: ModelName
    timestamp: Timestamp
    event_id: EventId | None = None
    user_id: Label | None = None
    tags: Tags = []
    provider: Label | None = None


class LlmRequestStarted(_WireEvent, tag="LLM_REQUEST_STARTED"):
    """An LLM request has been sent."""


class LlmRequestCompleted(_WireEvent, tag="LLM_REQUEST_COMPLETED"):
    """An LLM request finished successfully."""

    duration_ms: Millis
    prompt_tokens: Count
    completion_tokens: Count
    total_tokens: Count | None = None
    has_tool_calls: bool = False
    tool_calls: Count | None = None
    time_to_first_token_ms: Millis | None = None
    cached_prompt_tokens: Count | None = None
    # The part of prompt_tokens written to the provider's prompt cache (Anthropic's
    # cache_creation_input_tokens); cached + cache_write <= prompt_tokens.
    cache_write_prompt_tokens: Count | None = None
    reasoning_tokens: Count | None = None
    finish_reason: Label | None = None
    # Bounded so a cost folds into 64-bit pico-dollars; no single request costs a million.
    cost_usd: Annotated[float, Meta(ge=0, le=1e6)] | None = None


class LlmRequestFailed(_WireEvent, tag="LLM_REQUEST_FAILED"):
    """An LLM request ended with an error."""

    error_type: ErrorType
    duration_ms: Millis | None = None
    error_message: ErrorMessage | None = None


WireEvent = Union[LlmRequestStarted, LlmRequestCompleted, LlmRequestFailed]
WIRE_TYPES: tuple[type, ...] = (LlmRequestStarted, LlmRequestCompleted, LlmRequestFailed)
TERMINAL_TYPES: tuple[type, ...] = (LlmRequestCompleted, LlmRequestFailed)
