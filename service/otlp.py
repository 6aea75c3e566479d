"""OTLP/HTTP ingest: `POST /v1/traces` (and Langfuse's `/api/public/otel/v1/traces`) turns LLM
call spans into wire events; `/v1/logs` and `/v1/metrics` are accepted and counted.

Applications instrumented with OpenTelemetry (see docs/instrumentations.md) export spans; each
LLM call (`service.otlp_spans` decides which spans are one, `service.otlp_conventions` reads
them) becomes an `LLM_REQUEST_STARTED` plus an `LLM_REQUEST_COMPLETED` or
`LLM_REQUEST_FAILED`. Those wire events go through `ingest.prepare` and the writer exactly like
`POST /events`, so validation, idempotency and conflicts are decided in one place.

Both OTLP/HTTP encodings are read with the peer's own schema (`opentelemetry-proto`): protobuf
directly, JSON through protobuf's JSON mapping after turning the hex trace and span ids OTLP/JSON
uses into the bytes protobuf expects.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from events.store import NewEvent, Rejected
from service import ingest, keys
from service.otlp_spans import ATTRIBUTE_OF, ExportMapping, SpanRejection, map_request
from service.problems import ApiError
from service.writer import Writer

PROTOBUF = "application/x-protobuf"
JSON = "application/json"



class OtlpPartialSuccess(msgspec.Struct):
    """What could not be accepted (OTLP `ExportTracePartialSuccess`, JSON mapping)."""

    rejectedSpans: int = 0
    errorMessage: str = ""


class OtlpExportResponse(msgspec.Struct, omit_defaults=True):
    """The answer to an export (OTLP `ExportTraceServiceResponse`, JSON mapping)."""

    partialSuccess: OtlpPartialSuccess | None = None


# What became of received spans, counted since the process started (served on `/metrics`):
# `merged` spans were part of a call another span of the same export describes, or a call
# already stored from another span; `log_records` and `metric_points` are accepted on
# /v1/logs and /v1/metrics and not mapped.
SPAN_OUTCOMES = ("mapped", "rejected", "tool", "ignored", "merged", "log_records",
                 "metric_points")


def new_span_counts() -> dict[str, int]:
    return dict.fromkeys(SPAN_OUTCOMES, 0)


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
        document = _json_document(body)
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


def _json_document(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body) if body.strip() else {}
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON: {str(exc).removeprefix('JSON is malformed: ')}") \
            from None
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"body is not valid UTF-8 (byte {exc.start})") from None


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


# ---- the endpoint ----------------------------------------------------------------------------

async def ingest_spans(writer: Writer, mapping: ExportMapping
                       ) -> tuple[int, int, list[SpanRejection]]:
    """Prepare and append the mapped spans; returns (spans stored or already stored, spans of a
    call already stored from another span, rejections).

    A span whose events fail `ingest.prepare` or conflict with the log is rejected alone, so
    one bad span does not cost the rest of the export (OTLP's partial success). A call keyed
    by its response id whose event ids are already stored with other content is the same call
    reported by another span (another instrumentation, another trace): not an error.
    """
    rejected = list(mapping.rejected)
    batches: list[tuple[str, bool, list[NewEvent]]] = []
    for span in mapping.mapped:
        try:
            batches.append((span.span_ref, span.keyed, ingest.prepare(span.events)))
        except ApiError as exc:
            rejected.append(SpanRejection(span.span_ref, _prepare_reason(exc)))
    merged = 0
    while batches:
        flat = [event for *_, events in batches for event in events]
        owner = [i for i, (*_, events) in enumerate(batches) for _ in events]
        result = await writer.submit(flat)
        if not isinstance(result, Rejected):
            break
        # Conflicts reject the whole batch: drop the spans that conflict and try the rest.
        bad: dict[int, str] = {}
        for issue in result.details:
            bad.setdefault(owner[issue.index], issue.message if issue.path != "$.event_id"
                           or not batches[owner[issue.index]][1] else "")
        merged += sum(1 for message in bad.values() if not message)
        rejected.extend(SpanRejection(batches[i][0], message) for i, message in bad.items()
                        if message)
        batches = [b for i, b in enumerate(batches) if i not in bad]
    return len(batches), merged, rejected


def _prepare_reason(exc: ApiError) -> str:
    """`ingest.prepare`'s first issue, naming the span attribute rather than the event field."""
    if not exc.details:
        return exc.message
    first = exc.details[0]
    field = first.path.removeprefix("$.")
    return f"{ATTRIBUTE_OF.get(field, field)}: {first.message}"


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
        message = f"{ignored} spans are not LLM calls (see docs/instrumentations.md for the " \
                  "attributes read) and were ignored"
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
    stored, merged, rejected = await ingest_spans(request.app[keys.WRITER], mapping)
    counts = request.app[keys.OTLP_SPANS]
    counts["mapped"] += stored
    counts["rejected"] += len(rejected)
    counts["tool"] += mapping.tools
    counts["ignored"] += mapping.ignored
    counts["merged"] += mapping.merged + merged
    return encode_response(rejected, mapping.ignored, content_type)


# ---- logs and metrics ------------------------------------------------------------------------

def count_records(body: bytes, content_type: str, kind: str) -> int:
    """How many log records (`kind="logs"`) or metric data points (`"metrics"`) an export holds.

    Spans already carry every figure the service records, so these are accepted and counted
    only; reading them lets a malformed export still be a 400 naming the problem.
    """
    media = ingest.media_type(content_type)
    if media == PROTOBUF:
        message = ExportLogsServiceRequest() if kind == "logs" else ExportMetricsServiceRequest()
        try:
            message.ParseFromString(body)
        except DecodeError as exc:
            raise ApiError(400, f"malformed OTLP protobuf body: {exc}") from None
        if kind == "logs":
            return sum(len(scope.log_records) for resource in message.resource_logs
                       for scope in resource.scope_logs)
        return sum(len(getattr(metric, metric.WhichOneof("data")).data_points)
                   for resource in message.resource_metrics for scope in resource.scope_metrics
                   for metric in scope.metrics if metric.WhichOneof("data"))
    if media == JSON:
        document = _json_document(body)
        if not isinstance(document, dict):
            raise ApiError(400, f"an OTLP JSON export is an object with "
                                f"`resource{kind.capitalize()}`")
    else:
        raise ApiError(415, f"unsupported content-type {content_type or '(none)'!r}: OTLP/HTTP "
                            f"sends {PROTOBUF} or {JSON}")
    # JSON: counted from the document itself, without building protobuf messages.
    if kind == "logs":
        return sum(len(_items(scope, ("logRecords", "log_records"), "$"))
                   for resource in _items(document, ("resourceLogs", "resource_logs"), "$")
                   for scope in _items(resource, ("scopeLogs", "scope_logs"), "$"))
    return sum(_points(metric)
               for resource in _items(document, ("resourceMetrics", "resource_metrics"), "$")
               for scope in _items(resource, ("scopeMetrics", "scope_metrics"), "$")
               for metric in _items(scope, ("metrics",), "$"))


def _points(metric: Any) -> int:
    if not isinstance(metric, dict):
        raise ApiError(400, "$.resourceMetrics[].scopeMetrics[].metrics[] must be objects")
    return sum(len(_items(data, ("dataPoints", "data_points"), "$"))
               for name in ("gauge", "sum", "histogram", "exponentialHistogram", "summary")
               if isinstance(data := metric.get(name), dict))


def _signal_response(kind: str, content_type: str) -> web.Response:
    if ingest.media_type(content_type) == PROTOBUF:
        response = ExportLogsServiceResponse() if kind == "logs" else \
            ExportMetricsServiceResponse()
        return web.Response(body=response.SerializeToString(), content_type=PROTOBUF)
    return web.Response(body=b"{}", content_type=JSON)


async def post_logs(request: web.Request) -> web.Response:
    """OTLP/HTTP log export: accepted and counted (`log_records`), not mapped."""
    content_type = request.headers.get("content-type", "")
    request.app[keys.OTLP_SPANS]["log_records"] += count_records(
        await request.read(), content_type, "logs")
    return _signal_response("logs", content_type)


async def post_metrics(request: web.Request) -> web.Response:
    """OTLP/HTTP metric export: accepted and counted (`metric_points`), not mapped."""
    content_type = request.headers.get("content-type", "")
    request.app[keys.OTLP_SPANS]["metric_points"] += count_records(
        await request.read(), content_type, "metrics")
    return _signal_response("metrics", content_type)
