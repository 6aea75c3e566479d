"""Which spans of a trace export are LLM calls, and the wire events of each: one call gives one
request whatever the span layout.

- Spans the conventions mark as LLM calls are read by `otlp_conventions.read_call`; others
  are only counted. `execute_tool` spans count as tool calls of their parent.
- Spans with the same `gen_ai.response.id` are one call (the anthropic SDK's own span and
  OpenLLMetry's, in different traces): merged, each attribute from the first span that has
  it, the provider SDK's own span first. A failed anthropic SDK span (no response id) inside
  another failed call of the same model is that call.
- logfire ends a streaming call's span at the first response and logs the usage afterwards in
  a zero-duration span with a `duration`: the two are merged into one call that lasts until
  the log.

A call with a response id is keyed by it (request id and event ids), so the same call sent
again in a later export, by either span, is stored once.
"""

from __future__ import annotations

import binascii
import hashlib
from typing import Any, Iterable, NamedTuple

import msgspec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from events.codec import us_to_timestamp
from events.schema import LlmRequestCompleted, LlmRequestFailed, LlmRequestStarted, WireEvent
from service import otlp_conventions as conventions
from service.otlp_conventions import READ_ATTRIBUTES, ConventionError

EXECUTE_TOOL = "execute_tool"
# The semantic conventions' fallback `error.type` when nothing more specific is known.
UNKNOWN_ERROR = "_OTHER"
MAX_ERROR_MESSAGE = 4096
ANTHROPIC_SDK_SCOPE = "com.anthropic.sdk.python"
# Event ids are at most 128 characters: longer response ids are hashed.
MAX_KEY = 100


class SpanView(NamedTuple):
    """The parts of a span the mapping uses (a merged call is one of these too)."""

    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    start_ns: int
    end_ns: int
    failed: bool
    status_message: str
    events: list[tuple[str, int, dict]]
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str

    @property
    def ref(self) -> str:
        return f"{_hex(self.trace_id)}/{_hex(self.span_id)}"


class MappedSpan(NamedTuple):
    """The wire events of one call; `keyed` when its ids come from its response id."""

    span_ref: str
    events: list[WireEvent]
    keyed: bool = False


class SpanRejection(NamedTuple):
    span_ref: str
    reason: str


class ExportMapping(NamedTuple):
    """What an export request maps to."""

    mapped: list[MappedSpan]
    rejected: list[SpanRejection]
    ignored: int
    tools: int
    merged: int = 0


class SpanError(ValueError):
    """An LLM span that cannot become valid events; the message says which attribute."""


# ---- reading protobuf ------------------------------------------------------------------------

def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(item) for item in v.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(v.kvlist_value.values)
    return getattr(v, kind)


def attributes_of(pairs: Iterable[KeyValue], keep: frozenset[str] | None = None
                  ) -> dict[str, Any]:
    """Attribute key -> Python value, for the keys in `keep` (every key when None)."""
    return {kv.key: _value(kv.value) for kv in pairs if keep is None or kv.key in keep}


def _hex(raw: bytes) -> str:
    return binascii.hexlify(raw).decode()


def _view(span: Span, attributes: dict, resource: dict, scope: str) -> SpanView:
    events = [(e.name, e.time_unix_nano,
               attributes_of(e.attributes) if e.name == "exception" else {})
              for e in span.events]
    return SpanView(span.trace_id, span.span_id, span.parent_span_id, span.start_time_unix_nano,
                    span.end_time_unix_nano, span.status.code == Status.STATUS_CODE_ERROR,
                    span.status.message, events, attributes, resource, scope)


# ---- which spans are calls -------------------------------------------------------------------

def map_request(request: ExportTraceServiceRequest) -> ExportMapping:
    """The wire events of every LLM call in an export; other spans are only counted.

    Children end, and are queued, before their parent, so a batch boundary between a tool span
    and its call loses the count; carrying spans over to a later export would make the mapping
    depend on history and break idempotent re-exports.
    """
    calls: list[SpanView] = []
    tool_children: dict[tuple[bytes, bytes], int] = {}
    ignored = tools = 0
    for rs in request.resource_spans:
        resource = attributes_of(rs.resource.attributes, READ_ATTRIBUTES)
        for ss in rs.scope_spans:
            for span in ss.spans:
                attributes = attributes_of(span.attributes, READ_ATTRIBUTES)
                if not attributes:
                    attributes = conventions.from_span_name(ss.scope.name, span.name)
                if not conventions.is_llm_call(attributes):
                    ignored += 1
                elif attributes.get(conventions.OPERATION) == EXECUTE_TOOL:
                    tools += 1
                    if span.parent_span_id:
                        key = (span.trace_id, span.parent_span_id)
                        tool_children[key] = tool_children.get(key, 0) + 1
                else:
                    calls.append(_view(span, attributes, resource, ss.scope.name))
    before = len(calls)
    calls = merge_same_response(merge_logfire_streams(calls))
    merged = before - len(calls)
    mapped, rejected = [], []
    for call in calls:
        try:
            events, keyed = span_events(call, tool_children.get((call.trace_id, call.span_id), 0))
        except SpanError as exc:
            rejected.append(SpanRejection(call.ref, str(exc)))
            continue
        mapped.append(MappedSpan(call.ref, events, keyed))
    return ExportMapping(mapped, rejected, ignored, tools, merged)


def _is_logfire_stream_log(view: SpanView) -> bool:
    return view.attributes.get("logfire.span_type") == "log" and "duration" in view.attributes


def merge_logfire_streams(calls: list[SpanView]) -> list[SpanView]:
    """Each logfire stream log joined to the request span it follows (same trace, parent and
    model, ended before the log): the call lasts from the request to the log."""
    logs = [c for c in calls if _is_logfire_stream_log(c)]
    if not logs:
        return calls
    claimed: set[int] = set()
    replaced: dict[int, SpanView] = {}
    for log in logs:
        model = log.attributes.get(conventions.REQUEST_MODEL)
        candidates = [i for i, c in enumerate(calls)
                      if i not in claimed and not _is_logfire_stream_log(c)
                      and c.trace_id == log.trace_id and c.parent_id == log.parent_id
                      and c.attributes.get(conventions.REQUEST_MODEL) == model
                      and c.scope == log.scope and c.end_ns <= log.start_ns
                      and "gen_ai.response.id" not in c.attributes and not c.failed]
        attributes = {k: v for k, v in log.attributes.items()
                      if k not in ("logfire.span_type", "duration")}
        if candidates:
            best = max(candidates, key=lambda i: calls[i].start_ns)
            claimed.add(best)
            request = calls[best]
            replaced[id(log)] = request._replace(
                end_ns=log.start_ns, attributes={**request.attributes, **attributes})
        else:
            seconds = conventions._number(log.attributes.get("duration"), "duration") or 0
            replaced[id(log)] = log._replace(start_ns=max(0, log.start_ns - int(seconds * 1e9)),
                                             attributes=attributes)
    return [replaced.get(id(c), c) for i, c in enumerate(calls) if i not in claimed]


def merge_same_response(calls: list[SpanView]) -> list[SpanView]:
    """One call per `gen_ai.response.id`; a failed anthropic SDK span inside another failed call
    of the same model dropped."""
    groups: dict[str, list[SpanView]] = {}
    out: list[SpanView | str] = []
    for call in calls:
        response_id = call.attributes.get("gen_ai.response.id")
        if not response_id:
            out.append(call)
            continue
        if str(response_id) not in groups:
            out.append(str(response_id))
        groups.setdefault(str(response_id), []).append(call)
    views = [_merge(groups[c]) if isinstance(c, str) else c for c in out]
    return [v for v in views if not _duplicate_sdk_failure(v, views)]


def _merge(group: list[SpanView]) -> SpanView:
    group = sorted(group, key=lambda c: c.scope != ANTHROPIC_SDK_SCOPE)
    attributes: dict[str, Any] = {}
    for call in group:
        for key, value in call.attributes.items():
            attributes.setdefault(key, value)
    return group[0]._replace(attributes=attributes)


def _duplicate_sdk_failure(view: SpanView, views: list[SpanView]) -> bool:
    if view.scope != ANTHROPIC_SDK_SCOPE or not view.failed:
        return False
    model = view.attributes.get(conventions.REQUEST_MODEL)
    return any(other is not view and other.failed and other.scope != ANTHROPIC_SDK_SCOPE
               and other.attributes.get(conventions.REQUEST_MODEL) == model
               and other.start_ns <= view.start_ns and view.end_ns <= other.end_ns
               for other in views)


# ---- events ----------------------------------------------------------------------------------

def span_events(view: SpanView, tool_spans: int = 0) -> tuple[list[WireEvent], bool]:
    """The started and terminal wire events of one call (validated by the wire schema), and
    whether their ids come from the response id."""
    if len(view.trace_id) != 16 or len(view.span_id) != 8:
        raise SpanError("traceId must be 16 bytes and spanId 8 bytes")
    if not view.start_ns or not view.end_ns:
        raise SpanError("startTimeUnixNano and endTimeUnixNano are required")
    if view.end_ns < view.start_ns:
        raise SpanError("endTimeUnixNano is before startTimeUnixNano")
    try:
        call = conventions.read_call(view.attributes, view.resource, view.start_ns, view.events)
    except ConventionError as exc:
        raise SpanError(str(exc)) from None
    trace = _hex(view.trace_id)
    if call.response_id:
        key = call.response_id if len(call.response_id) <= MAX_KEY else \
            hashlib.sha256(call.response_id.encode()).hexdigest()
        request_id, event_id = key, f"otlp-{key}"
    else:
        request_id = _hex(view.span_id)
        event_id = f"otlp-{trace}-{request_id}"
    common = dict(session_id=call.session_id or trace, request_id=request_id, model=call.model,
                  user_id=call.user_id, provider=call.provider)
    started = dict(common, event_id=f"{event_id}-s", timestamp=_time(view.start_ns))
    ended = dict(common, event_id=f"{event_id}-e", timestamp=_time(view.end_ns),
                 duration_ms=(view.end_ns - view.start_ns) / 1e6)
    if view.failed or call.error_type is not None:
        terminal = LlmRequestFailed
        exception = next((a for name, _, a in view.events if name == "exception"), {})
        message = view.status_message or exception.get("exception.message") or \
            view.attributes.get("langfuse.observation.status_message")
        ended.update(
            error_type=call.error_type or conventions.error_class(exception.get("exception.type"))
            or UNKNOWN_ERROR,
            error_message=str(message)[:MAX_ERROR_MESSAGE] if message else None,
        )
    else:
        terminal = LlmRequestCompleted
        ended.update(
            prompt_tokens=call.prompt_tokens or 0,
            completion_tokens=call.completion_tokens or 0,
            cached_prompt_tokens=call.cached_prompt_tokens,
            cache_write_prompt_tokens=call.cache_write_prompt_tokens,
            reasoning_tokens=call.reasoning_tokens,
            time_to_first_token_ms=call.ttft_ms,
            finish_reason=call.finish_reason,
            has_tool_calls=tool_spans > 0 or call.asked_for_tool,
            tool_calls=tool_spans or None,
        )
    try:
        # convert, unlike a Struct's constructor, checks every constraint of the wire schema
        # (into the concrete types: three times faster than into the tagged union).
        events = [msgspec.convert(started, LlmRequestStarted), msgspec.convert(ended, terminal)]
    except msgspec.ValidationError as exc:
        raise SpanError(_span_path(str(exc))) from None
    return events, call.response_id is not None


# The attribute named in an error about an event field (the first of the names read for it).
ATTRIBUTE_OF = {
    "session_id": conventions.SESSION[0],
    "model": conventions.MODEL[0],
    "prompt_tokens": conventions.INPUT[0],
    "completion_tokens": conventions.OUTPUT[0],
    "cached_prompt_tokens": conventions.CACHE_READ[0],
    "cache_write_prompt_tokens": conventions.CACHE_WRITE[0],
    "reasoning_tokens": conventions.REASONING[0],
    "time_to_first_token_ms": conventions.TTFT_SECONDS[0],
    "finish_reason": conventions.FINISH[0],
    "user_id": conventions.USER[0],
    "provider": conventions.PROVIDER[0],
    "error_type": conventions.ERROR_TYPE,
}


def _span_path(message: str) -> str:
    """'Expected `int` >= 0 - at `$[1].prompt_tokens`' -> name the span attribute instead."""
    head, _, path = message.partition(" - at `")
    name = path.rstrip("`").rsplit(".", 1)[-1]
    attribute = ATTRIBUTE_OF.get(name)
    return f"{attribute}: {head}" if attribute else message


def _time(unix_nano: int):
    return us_to_timestamp(unix_nano // 1000)
