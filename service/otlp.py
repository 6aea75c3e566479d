"""OTLP/HTTP trace ingest (`POST /v1/traces`): OpenTelemetry GenAI spans become wire events.

Applications instrumented with OpenTelemetry (the official GenAI instrumentations, OpenLLMetry,
OpenLIT) export spans; a span that describes an LLM call (`gen_ai.operation.name` or
`gen_ai.request.model`) becomes an `LLM_REQUEST_STARTED` plus an `LLM_REQUEST_COMPLETED` or
`LLM_REQUEST_FAILED`. Those wire events go through `ingest.prepare` and the writer exactly like
`POST /events`, so validation, idempotency and conflicts are decided in one place.

Both OTLP/HTTP encodings are read with the peer's own schema (`opentelemetry-proto`): protobuf
directly, JSON through protobuf's JSON mapping after turning the hex trace and span ids OTLP/JSON
uses into the bytes protobuf expects.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Iterable, NamedTuple

import msgspec
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from events.codec import us_to_timestamp
from events.schema import LlmRequestCompleted, LlmRequestFailed, LlmRequestStarted, WireEvent
from events.store import NewEvent, Rejected
from service import ingest, keys
from service.problems import ApiError
from service.writer import Writer

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# Finish reasons that mean "the model asked for a tool" across providers' vocabularies.
TOOL_FINISH_REASONS = frozenset({"tool_calls", "tool_call", "tool_use", "function_call"})
EXECUTE_TOOL = "execute_tool"
# The semantic conventions' fallback `error.type` when nothing more specific is known.
UNKNOWN_ERROR = "_OTHER"
MAX_ERROR_MESSAGE = 4096


class OtlpPartialSuccess(msgspec.Struct):
    """What could not be accepted (OTLP `ExportTracePartialSuccess`, JSON mapping)."""

    rejectedSpans: int = 0
    errorMessage: str = ""


class OtlpExportResponse(msgspec.Struct, omit_defaults=True):
    """The answer to an export (OTLP `ExportTraceServiceResponse`, JSON mapping)."""

    partialSuccess: OtlpPartialSuccess | None = None


# What became of received spans, counted since the process started (served on `/metrics`).
SPAN_OUTCOMES = ("mapped", "rejected", "tool", "ignored")


def new_span_counts() -> dict[str, int]:
    return dict.fromkeys(SPAN_OUTCOMES, 0)


class MappedSpan(NamedTuple):
    """The wire events of one GenAI span."""

    span_ref: str
    events: list[WireEvent]


class SpanRejection(NamedTuple):
    span_ref: str
    reason: str


class ExportMapping(NamedTuple):
    """What an export request maps to."""

    mapped: list[MappedSpan]
    rejected: list[SpanRejection]
    ignored: int
    tools: int


# ---- decoding --------------------------------------------------------------------------------

def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """The export request in `body` (already decompressed), protobuf or JSON."""
    kind = ingest.media_type(content_type)
    request = ExportTraceServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise ApiError(400, f"malformed OTLP protobuf body: {exc}") from None
        return request
    if kind == JSON:
        try:
            document = msgspec.json.decode(body) if body.strip() else {}
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"malformed JSON: {str(exc).removeprefix('JSON is malformed: ')}") \
                from None
        except UnicodeDecodeError as exc:
            raise ApiError(400, f"body is not valid UTF-8 (byte {exc.start})") from None
        if not isinstance(document, dict):
            raise ApiError(400, "an OTLP JSON export is an object with `resourceSpans`")
        _hex_ids_to_base64(document)
        try:
            json_format.ParseDict(document, request, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise ApiError(400, f"not an OTLP trace export: {exc}") from None
        return request
    raise ApiError(
        415,
        f"unsupported content-type {content_type or '(none)'!r}: OTLP/HTTP sends "
        f"{PROTOBUF} or {JSON}",
    )


_ID_FIELDS = {"traceId": 16, "trace_id": 16, "spanId": 8, "span_id": 8, "parentSpanId": 8,
              "parent_span_id": 8}


def _hex_ids_to_base64(document: dict) -> None:
    """OTLP/JSON writes ids as hex, protobuf's JSON mapping expects base64: convert in place."""
    for i, rs in enumerate(_items(document, ("resourceSpans", "resource_spans"), "$")):
        for j, ss in enumerate(_items(rs, ("scopeSpans", "scope_spans"),
                                      f"$.resourceSpans[{i}]")):
            for k, span in enumerate(_items(ss, ("spans",),
                                            f"$.resourceSpans[{i}].scopeSpans[{j}]")):
                path = f"$.resourceSpans[{i}].scopeSpans[{j}].spans[{k}]"
                _convert_ids(span, path)
                for n, link in enumerate(_items(span, ("links",), path)):
                    _convert_ids(link, f"{path}.links[{n}]")


def _items(obj: Any, names: tuple[str, ...], path: str) -> list:
    if not isinstance(obj, dict):
        raise ApiError(400, f"{path} must be an object")
    for name in names:
        if name in obj:
            value = obj[name]
            if value is None:
                return []
            if not isinstance(value, list):
                raise ApiError(400, f"{path}.{name} must be an array")
            return value
    return []


def _convert_ids(obj: Any, path: str) -> None:
    if not isinstance(obj, dict):
        raise ApiError(400, f"{path} must be an object")
    for name, size in _ID_FIELDS.items():
        value = obj.get(name)
        if value is None or value == "":
            continue
        try:
            raw = bytes.fromhex(value) if isinstance(value, str) else None
        except ValueError:
            raw = None
        if raw is None or len(raw) != size:
            raise ApiError(400, f"{path}.{name} must be {size * 2} hex digits, got {value!r}")
        obj[name] = base64.b64encode(raw).decode()


# ---- mapping ---------------------------------------------------------------------------------

def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(item) for item in v.array_value.values]
    if kind == "kvlist_value":
        return _attributes(v.kvlist_value.values)
    return getattr(v, kind)


# The attributes the mapping reads. Only these are converted: a span may also carry large
# ones (`gen_ai.input.messages`, prompts and completions) that would cost time for nothing.
READ_ATTRIBUTES = frozenset({
    "gen_ai.operation.name", "gen_ai.request.model", "gen_ai.response.model",
    "gen_ai.conversation.id", "session.id", "user.id", "enduser.id", "gen_ai.provider.name",
    "gen_ai.system", "error.type", "gen_ai.response.finish_reasons",
    "gen_ai.response.time_to_first_chunk", "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens", "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens",
    "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.reasoning.output_tokens",
})


def _attributes(pairs: Iterable[KeyValue], keep: frozenset[str] | None = None
                ) -> dict[str, Any]:
    """Attribute key -> Python value, for the keys in `keep` (every key when None)."""
    return {kv.key: _value(kv.value) for kv in pairs if keep is None or kv.key in keep}


def _hex(raw: bytes) -> str:
    return binascii.hexlify(raw).decode()


def is_genai(attributes: dict[str, Any]) -> bool:
    """A span the GenAI semantic conventions describe."""
    return "gen_ai.operation.name" in attributes or "gen_ai.request.model" in attributes


def map_request(request: ExportTraceServiceRequest) -> ExportMapping:
    """The wire events of every GenAI span of an export; other spans are only counted.

    `execute_tool` spans are not LLM requests: each one counts as a tool call of its parent
    span when the parent is in the same export. Children end, and are queued, before their
    parent, so a batch boundary between them loses the count; carrying children over to a
    later export would make the mapping depend on history and break idempotent re-exports.
    """
    spans: list[tuple[Span, dict, dict]] = []
    tool_children: dict[tuple[bytes, bytes], int] = {}
    ignored = tools = 0
    for rs in request.resource_spans:
        resource = _attributes(rs.resource.attributes, READ_ATTRIBUTES)
        for ss in rs.scope_spans:
            for span in ss.spans:
                attributes = _attributes(span.attributes, READ_ATTRIBUTES)
                if not is_genai(attributes):
                    ignored += 1
                elif attributes.get("gen_ai.operation.name") == EXECUTE_TOOL:
                    tools += 1
                    if span.parent_span_id:
                        key = (span.trace_id, span.parent_span_id)
                        tool_children[key] = tool_children.get(key, 0) + 1
                else:
                    spans.append((span, attributes, resource))
    mapped, rejected = [], []
    for span, attributes, resource in spans:
        ref = f"{_hex(span.trace_id)}/{_hex(span.span_id)}"
        try:
            events = span_events(span, attributes, resource,
                                 tool_children.get((span.trace_id, span.span_id), 0))
        except SpanError as exc:
            rejected.append(SpanRejection(ref, str(exc)))
            continue
        mapped.append(MappedSpan(ref, events))
    return ExportMapping(mapped, rejected, ignored, tools)


class SpanError(ValueError):
    """A GenAI span that cannot become valid events; the message says which attribute."""


def span_events(span: Span, attributes: dict, resource: dict, tool_spans: int = 0
                ) -> list[WireEvent]:
    """The started and terminal wire events of one GenAI span (validated by the wire schema)."""
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        raise SpanError("traceId must be 16 bytes and spanId 8 bytes")
    if not span.start_time_unix_nano or not span.end_time_unix_nano:
        raise SpanError("startTimeUnixNano and endTimeUnixNano are required")
    if span.end_time_unix_nano < span.start_time_unix_nano:
        raise SpanError("endTimeUnixNano is before startTimeUnixNano")

    both = (attributes, resource)
    trace, span_id = _hex(span.trace_id), _hex(span.span_id)
    session = _first(both, "gen_ai.conversation.id", "session.id") or trace
    common = dict(
        session_id=str(session),
        request_id=span_id,
        model=str(_first((attributes,), "gen_ai.response.model", "gen_ai.request.model") or ""),
        user_id=_text(_first(both, "user.id", "enduser.id")),
        provider=_text(_first((attributes,), "gen_ai.provider.name", "gen_ai.system")),
    )
    duration_ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
    event_id = f"otlp-{trace}-{span_id}"
    started = dict(common, event_id=f"{event_id}-s", timestamp=_time(span.start_time_unix_nano))
    ended = dict(common, event_id=f"{event_id}-e", timestamp=_time(span.end_time_unix_nano),
                 duration_ms=duration_ms)
    error_type = _first((attributes,), "error.type")
    if span.status.code == Status.STATUS_CODE_ERROR or error_type is not None:
        terminal = LlmRequestFailed
        exception = _exception(span)
        message = span.status.message or exception.get("exception.message")
        ended.update(
            error_type=str(error_type or exception.get("exception.type") or UNKNOWN_ERROR),
            error_message=str(message)[:MAX_ERROR_MESSAGE] if message else None,
        )
    else:
        terminal = LlmRequestCompleted
        reasons = _first((attributes,), "gen_ai.response.finish_reasons")
        if isinstance(reasons, str):
            reasons = [reasons]
        reasons = [str(r) for r in reasons or []]
        ttft_s = _number(_first((attributes,), "gen_ai.response.time_to_first_chunk"),
                         "gen_ai.response.time_to_first_chunk")
        ended.update(
            prompt_tokens=_count(attributes, "gen_ai.usage.input_tokens",
                                 "gen_ai.usage.prompt_tokens"),
            completion_tokens=_count(attributes, "gen_ai.usage.output_tokens",
                                     "gen_ai.usage.completion_tokens"),
            cached_prompt_tokens=_count(attributes, "gen_ai.usage.cache_read.input_tokens",
                                        default=None),
            reasoning_tokens=_count(attributes, "gen_ai.usage.reasoning.output_tokens",
                                    default=None),
            time_to_first_token_ms=None if ttft_s is None else ttft_s * 1000,
            finish_reason=reasons[0] if reasons else None,
            has_tool_calls=tool_spans > 0 or any(r in TOOL_FINISH_REASONS for r in reasons),
            tool_calls=tool_spans or None,
        )
    try:
        # convert, unlike a Struct's constructor, checks every constraint of the wire schema
        # (into the concrete types: three times faster than into the tagged union).
        return [msgspec.convert(started, LlmRequestStarted), msgspec.convert(ended, terminal)]
    except msgspec.ValidationError as exc:
        raise SpanError(_span_path(str(exc))) from None


def _first(scopes: tuple[dict, ...], *names: str) -> Any:
    """The first non-empty value of `names`, looked up scope by scope (span, then resource)."""
    for scope in scopes:
        for name in names:
            value = scope.get(name)
            if value is not None and value != "":
                return value
    return None


_ATTRIBUTE_OF = {
    "session_id": "gen_ai.conversation.id / session.id",
    "model": "gen_ai.response.model / gen_ai.request.model",
    "prompt_tokens": "gen_ai.usage.input_tokens",
    "completion_tokens": "gen_ai.usage.output_tokens",
    "cached_prompt_tokens": "gen_ai.usage.cache_read.input_tokens",
    "reasoning_tokens": "gen_ai.usage.reasoning.output_tokens",
    "time_to_first_token_ms": "gen_ai.response.time_to_first_chunk",
    "finish_reason": "gen_ai.response.finish_reasons",
    "user_id": "user.id / enduser.id",
    "provider": "gen_ai.provider.name / gen_ai.system",
    "error_type": "error.type",
}


def _span_path(message: str) -> str:
    """'Expected `int` >= 0 - at `$[1].prompt_tokens`' -> name the span attribute instead."""
    head, _, path = message.partition(" - at `")
    name = path.rstrip("`").rsplit(".", 1)[-1]
    attribute = _ATTRIBUTE_OF.get(name)
    return f"{attribute}: {head}" if attribute else message


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise SpanError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SpanError(f"{name} must be a number, got {value!r}") from None


def _count(attributes: dict, *names: str, default: int | None = 0) -> int | None:
    for name in names:
        value = attributes.get(name)
        if value is None:
            continue
        number = _number(value, name)
        if not number.is_integer():
            raise SpanError(f"{name} must be a whole number, got {value!r}")
        return int(number)
    return default


def _exception(span: Span) -> dict[str, Any]:
    for event in span.events:
        if event.name == "exception":
            return _attributes(event.attributes)
    return {}


def _time(unix_nano: int):
    return us_to_timestamp(unix_nano // 1000)


# ---- the endpoint ----------------------------------------------------------------------------

async def ingest_spans(writer: Writer, mapping: ExportMapping
                       ) -> tuple[int, list[SpanRejection]]:
    """Prepare and append the mapped spans; returns (spans stored or already stored, rejections).

    A span whose events fail `ingest.prepare` or conflict with the log is rejected alone, so
    one bad span does not cost the rest of the export (OTLP's partial success).
    """
    rejected = list(mapping.rejected)
    batches: list[tuple[str, list[NewEvent]]] = []
    for span in mapping.mapped:
        try:
            batches.append((span.span_ref, ingest.prepare(span.events)))
        except ApiError as exc:
            rejected.append(SpanRejection(span.span_ref, _prepare_reason(exc)))
    while batches:
        flat = [event for _, events in batches for event in events]
        owner = [i for i, (_, events) in enumerate(batches) for _ in events]
        result = await writer.submit(flat)
        if not isinstance(result, Rejected):
            break
        # Conflicts reject the whole batch: drop the spans that conflict and try the rest.
        bad = {owner[issue.index]: issue.message for issue in result.details}
        rejected.extend(SpanRejection(batches[i][0], message) for i, message in bad.items())
        batches = [b for i, b in enumerate(batches) if i not in bad]
    return len(batches), rejected


def _prepare_reason(exc: ApiError) -> str:
    """`ingest.prepare`'s first issue, naming the span attribute rather than the event field."""
    if not exc.details:
        return exc.message
    first = exc.details[0]
    field = first.path.removeprefix("$.")
    return f"{_ATTRIBUTE_OF.get(field, field)}: {first.message}"


def encode_response(rejected: list[SpanRejection], ignored: int, content_type: str
                    ) -> web.Response:
    """200 with an empty response, or a partial success naming what was not accepted."""
    message = ""
    if rejected:
        shown = "; ".join(f"span {r.span_ref}: {r.reason}" for r in rejected[:5])
        more = f" (and {len(rejected) - 5} more)" if len(rejected) > 5 else ""
        message = f"{len(rejected)} GenAI spans rejected: {shown}{more}"
    elif ignored:
        # OTLP allows a warning with rejectedSpans 0; it tells a user why spans are not counted.
        message = f"{ignored} spans are not GenAI spans (no gen_ai.operation.name or " \
                  "gen_ai.request.model) and were ignored"
    partial = OtlpPartialSuccess(len(rejected), message) if message else None
    if ingest.media_type(content_type) == PROTOBUF:
        response = ExportTraceServiceResponse()
        if partial is not None:
            response.partial_success.CopyFrom(
                ExportTracePartialSuccess(rejected_spans=partial.rejectedSpans,
                                          error_message=partial.errorMessage))
        return web.Response(body=response.SerializeToString(), content_type=PROTOBUF)
    return web.Response(body=msgspec.json.encode(OtlpExportResponse(partial)), content_type=JSON)


async def post_traces(request: web.Request) -> web.Response:
    """OTLP/HTTP trace export: map GenAI spans, append them, answer with a partial success."""
    content_type = request.headers.get("content-type", "")
    # aiohttp has already undone `content-encoding: gzip` / `deflate` while reading the body.
    export = decode_request(await request.read(), content_type)
    limit = request.app[keys.CONFIG].max_events
    spans = sum(len(ss.spans) for rs in export.resource_spans for ss in rs.scope_spans)
    if spans > limit:
        raise ApiError(413, f"{spans} spans in one export, more than the limit of {limit} "
                            "(LLM_METRICS_MAX_EVENTS): lower the batch processor's "
                            "max_export_batch_size")
    mapping = map_request(export)
    stored, rejected = await ingest_spans(request.app[keys.WRITER], mapping)
    counts = request.app[keys.OTLP_SPANS]
    counts["mapped"] += stored
    counts["rejected"] += len(rejected)
    counts["tool"] += mapping.tools
    counts["ignored"] += mapping.ignored
    return encode_response(rejected, mapping.ignored, content_type)
