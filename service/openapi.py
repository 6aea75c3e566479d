"""`GET /openapi.json` (OpenAPI 3.1) and `GET /docs` (a readable page of it).

The document is built from the application's router, so a route is never missing from it: each
route is looked up in `OPERATIONS` (what it takes and returns), and `tests/integration/
test_openapi.py` fails for a route without an entry. Request and response bodies are the very
msgspec types the handlers decode and encode, turned into JSON Schema by
`msgspec.json.schema_components`; only the query parameters, which handlers parse by hand, and
the non-JSON bodies (NDJSON, protobuf, text) are described here.

Adding a route: add an `Operation` under `(METHOD, path as aiohttp writes it)`.
"""

from __future__ import annotations

import importlib.metadata
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union

import msgspec
from aiohttp import web
from msgspec import Meta

from events.schema import WireEvent
from projections.prices import PriceSaved, PricesDocument
from projections import query, views
from service import handlers, keys, lifecycle_handlers, otlp, stream
from service.alerts import manager as alerts
from service.alerts.rules import Rule
from service.auth import HEADER, is_public
from service.errors import ErrorBody

TITLE = "LLM Metrics"
try:
    VERSION = importlib.metadata.version("llm-metrics")
except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
    VERSION = "unknown"
DOCS_PAGE = Path(__file__).with_name("static") / "docs.html"


class Raw(NamedTuple):
    """A body that is not a msgspec type: a JSON Schema written here."""

    schema: dict[str, Any]


class Sse(NamedTuple):
    """A Server-Sent Events stream whose events carry `data` of a msgspec type, as JSON."""

    event: str
    type: Any


TEXT = Raw({"type": "string"})
BINARY = Raw({"type": "string", "format": "binary"})


class Param(NamedTuple):
    name: str
    type: Any  # a Python/msgspec type; its JSON Schema is generated
    description: str
    required: bool = False


class Operation(NamedTuple):
    summary: str
    # status -> {media type -> msgspec type or Raw}; errors are added by `_errors`.
    responses: dict[int, dict[str, Any]]
    request: dict[str, Any] | None = None
    query: tuple[Param, ...] = ()
    # Error statuses this route answers besides the ones every route may (see ERRORS).
    errors: tuple[int, ...] = ()
    description: str = ""


JSON = "application/json"
NDJSON = "application/x-ndjson"

# Every route may answer these (auth, limits, overload); bodies are always `ErrorBody`.
ERRORS = {
    400: "invalid request: the message and `details` name the field or parameter",
    401: f"missing or unknown `{HEADER}` key",
    403: "the key's role does not allow this route",
    404: "not found",
    408: "the request body took too long to arrive",
    409: "conflict with events already stored, or an alert rule name already taken",
    413: "body larger than the limit, or too many events",
    415: "unsupported content type",
    429: "rate limit exceeded (see Retry-After)",
    503: "the service cannot take events now (see Retry-After)",
}
COMMON_ERRORS = (400, 401, 403, 429)

Limit = Annotated[int, Meta(ge=1, le=1000)]
Cursor = Annotated[int, Meta(ge=0)]
Position = Annotated[int, Meta(ge=0)]
Time = Annotated[datetime, Meta(tz=True)]
Text = Annotated[str, Meta(min_length=1)]
SortKey = Literal[query.SESSION_SORTS]
Bucket = Literal[tuple(query.BUCKETS)]

WINDOW = (Param("from", Time, "only requests whose events are at or after this time (RFC 3339)"),
          Param("to", Time, "only requests whose events are before this time (RFC 3339)"))
AS_OF = (Param("as_of_position", Position, "the answer as it was at this log position"),
         Param("as_of", Time, "the answer as it was when this time was recorded"))
FILTERS = tuple(Param(name, Text, f"only requests with this {name} (repeat: any of them)")
                for name in query.DIMENSIONS)
LISTING = (Param("limit", Limit, "rows per page (default 100)"),
           Param("cursor", Text, "the `next` of the previous page"),
           Param("order", Literal["asc", "desc"], "sort order (default desc)"))
CSV = "text/csv"

OTLP_REQUEST = Raw({
    "type": "object",
    "description": "An OTLP `ExportTraceServiceRequest` in the OTLP/JSON encoding (ids in hex).",
    "properties": {"resourceSpans": {"type": "array", "items": {"type": "object"}}},
})
# Versions are negotiated from the Accept header (prometheus_client's choose_encoder).
PROMETHEUS_TEXT = "text/plain"
OPENMETRICS_TEXT = "application/openmetrics-text"

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/health"): Operation(
        "Liveness: 200 once replay is done", {200: {JSON: handlers.Health},
                                               503: {JSON: handlers.Health}}, errors=(),
        description="A replica of a shared PostgreSQL log also gives `lag_s` (seconds since "
                    "it last held the whole log), and answers 503 with a `reason` when it is "
                    "not following the log or is behind it."),
    ("POST", "/events"): Operation(
        "Ingest one event, a JSON array of events, or NDJSON",
        {201: {JSON: handlers.Ingested}},
        request={JSON: Union[WireEvent, list[WireEvent]], NDJSON: TEXT},
        errors=(408, 409, 413, 415, 503),
        description="All or nothing per request; answered after the commit. Re-posting an "
                    "`event_id` already stored is a duplicate, not an error."),
    ("GET", "/events"): Operation(
        "The stored events, as NDJSON wire events in log order",
        {200: {NDJSON: TEXT}},
        query=(Param("after", Position, "return events after this position"),
               Param("limit", Annotated[int, Meta(ge=1, le=10_000)], "most events returned"),
               Param("wait", Annotated[int, Meta(ge=0, le=60)],
                     "seconds to wait for new events when there are none"),
               Param("from", Time, "events with a timestamp at or after this time"),
               Param("to", Time, "events with a timestamp before this time"))),
    ("GET", "/events/metrics"): Operation(
        "Metrics over every session", {200: {JSON: views.GlobalMetrics}},
        query=FILTERS + WINDOW + AS_OF),
    ("GET", "/events/metrics/sessions"): Operation(
        "Sessions with their metrics, sorted and filtered, one page at a time",
        {200: {JSON: views.SessionsPage}},
        query=(Param("limit", Limit, "sessions per page (default 100)"),
               Param("cursor", Cursor, "the `next` of the previous page"),
               Param("sort", SortKey, "sort key (default first_seen: order of first appearance)"),
               Param("order", Literal["asc", "desc"], "sort order"),
               Param("model", Text, "sessions that used this model"),
               Param("user_id", Text, "sessions of this user"),
               Param("has_failures", bool, "sessions with (or without) failed requests"),
               Param("since", Time, "sessions seen at or after this time"))),
    ("GET", "/events/metrics/session/{session_id}"): Operation(
        "One session's metrics", {200: {JSON: views.SessionMetrics}},
        query=FILTERS + WINDOW + AS_OF, errors=(404,)),
    ("GET", "/events/metrics/session/{session_id}/requests"): Operation(
        "A session's requests, newest first, each with its fields",
        {200: {JSON: views.RequestsPage}},
        query=(Param("limit", Limit, "requests per page (default 100)"),
               Param("cursor", Text, "the `next` of the previous page")), errors=(404,)),
    ("GET", "/events/metrics/query"): Operation(
        "The metrics query API: measures over any slice, grouped by any dimensions",
        {200: {JSON: views.QueryAnswer, CSV: TEXT}},
        query=(Param("group_by", str, "comma-separated dimensions: "
                     + ", ".join(query.DIMENSIONS) + ", time (with bucket)"),
               Param("measures", str, "comma-separated measures: " + ", ".join(query.MEASURES)),
               Param("bucket", Bucket, "time bucket for group_by=time"),
               Param("sort", str, "a measure or dimension asked for"),
               Param("format", Literal["json", "csv"], "csv: the rows as text/csv"))
        + LISTING + FILTERS + WINDOW + AS_OF),
    ("GET", "/events/metrics/users"): Operation(
        "Every user with their metrics, most requests first",
        {200: {JSON: views.QueryAnswer, CSV: TEXT}},
        query=(Param("sort", Literal[query.LISTING_MEASURES + ("user_id",)], "sort key"),)
        + LISTING + FILTERS + WINDOW + AS_OF),
    ("GET", "/events/metrics/tags"): Operation(
        "Every tag with its metrics, most requests first",
        {200: {JSON: views.QueryAnswer, CSV: TEXT}},
        query=(Param("sort", Literal[query.LISTING_MEASURES + ("tag",)], "sort key"),)
        + LISTING + FILTERS + WINDOW + AS_OF),
    ("GET", "/events/metrics/models"): Operation(
        "Metrics per model, by name, a page at a time", {200: {JSON: views.ModelList}},
        query=LISTING[:2] + FILTERS + WINDOW + AS_OF),
    ("GET", "/events/metrics/models/{model}"): Operation(
        "One model's metrics", {200: {JSON: views.ModelMetrics}},
        query=FILTERS + WINDOW + AS_OF, errors=(404,)),
    ("GET", "/events/metrics/users/{user_id}"): Operation(
        "One user's metrics", {200: {JSON: views.UserMetrics}}, query=FILTERS + WINDOW + AS_OF,
        errors=(404,)),
    ("GET", "/events/metrics/timeseries"): Operation(
        "Requests, failures, tokens, cost and latency per time bucket",
        {200: {JSON: views.Series}},
        query=(Param("bucket", Bucket, "bucket width (default 1h)"),) + WINDOW + AS_OF
        + FILTERS),
    ("GET", "/events/metrics/stream"): Operation(
        "Server-Sent Events: the global metrics (and touched sessions) after each commit",
        {200: {"text/event-stream": Sse("metrics", stream.Update)}}),
    ("GET", "/dashboard"): Operation(
        "A live dashboard page (HTML)", {200: {"text/html": TEXT}}),
    ("POST", "/v1/traces"): Operation(
        "OTLP/HTTP trace export: OpenTelemetry GenAI spans become events",
        {200: {JSON: otlp.OtlpExportResponse, otlp.PROTOBUF: BINARY}},
        request={JSON: OTLP_REQUEST, otlp.PROTOBUF: BINARY},
        errors=(408, 413, 415, 503),
        description="LLM call spans (GenAI, OpenInference, Langfuse, ... conventions: see "
                    "docs/instrumentations.md) are mapped; "
                    "the answer's `partialSuccess` counts the spans that could not be. The "
                    "answer has the request's encoding. `content-encoding: gzip` is accepted."),
    ("POST", "/api/public/otel/v1/traces"): Operation(
        "Langfuse-compatible OTLP/HTTP trace export (the same as POST /v1/traces)",
        {200: {JSON: otlp.OtlpExportResponse, otlp.PROTOBUF: BINARY}},
        request={JSON: OTLP_REQUEST, otlp.PROTOBUF: BINARY},
        errors=(408, 413, 415, 503),
        description="Where Langfuse's SDK exports. Besides `x-internal-auth`, takes "
                    "`Authorization: Basic base64(public_key:secret_key)` when the secret key, "
                    "or the whole `public_key:secret_key`, is a configured key."),
    ("POST", "/v1/logs"): Operation(
        "OTLP/HTTP log export: accepted and counted, not mapped",
        {200: {JSON: Raw({"type": "object"}), otlp.PROTOBUF: BINARY}},
        request={JSON: Raw({"type": "object", "properties": {
            "resourceLogs": {"type": "array", "items": {"type": "object"}}}}),
            otlp.PROTOBUF: BINARY},
        errors=(408, 413, 415)),
    ("POST", "/v1/metrics"): Operation(
        "OTLP/HTTP metric export: accepted and counted, not mapped",
        {200: {JSON: Raw({"type": "object"}), otlp.PROTOBUF: BINARY}},
        request={JSON: Raw({"type": "object", "properties": {
            "resourceMetrics": {"type": "array", "items": {"type": "object"}}}}),
            otlp.PROTOBUF: BINARY},
        errors=(408, 413, 415)),
    ("GET", "/metrics"): Operation(
        "Prometheus exposition (OpenMetrics when the Accept header asks for it)",
        {200: {PROMETHEUS_TEXT: TEXT, OPENMETRICS_TEXT: TEXT}}),
    ("GET", "/prices"): Operation(
        "The price table every cost is computed with (USD per million tokens)",
        {200: {JSON: PricesDocument}},
        description="Every default filled in: each model's `patterns` and `prices` periods "
                    "(oldest first), with `cached_input`, `cache_write` and `above` tiers. "
                    "The answer can be sent back as is with `PUT /prices`."),
    ("PUT", "/prices"): Operation(
        "Replace the price table: saved durably, then every cost (all of history) uses it",
        {200: {JSON: PriceSaved}}, request={JSON: PricesDocument}, errors=(415,),
        description="Admin key only. The body is a price table as `LLM_METRICS_PRICES` "
                    "holds it; flat entries (`{\"input\", \"output\"}`) are accepted and "
                    "`digest` is ignored. A bad field is a 400 naming its JSON path, and "
                    "nothing changes. The saved table wins over `LLM_METRICS_PRICES` at the "
                    "next start."),
    ("DELETE", "/prices"): Operation(
        "Forget the table set by PUT /prices: back to LLM_METRICS_PRICES or the shipped one",
        {200: {JSON: PriceSaved}}, errors=(409,),
        description="Admin key only. 409 (the saved table stays) when the configured file "
                    "cannot be used."),
    ("DELETE", "/events/sessions/{session_id}"): Operation(
        "Erase every event of a session's requests for good (admin key)",
        {200: {JSON: lifecycle_handlers.Deleted}},
        description="Gone from every answer, the export, the log file and the facts file "
                    "once this answers (README, Data lifecycle); re-posting an erased event "
                    "is a duplicate. An unknown session is `deleted_events: 0`."),
    ("DELETE", "/events/users/{user_id}"): Operation(
        "Erase every event of every request any event of which names the user (admin key)",
        {200: {JSON: lifecycle_handlers.Deleted}},
        description="As for a session; a request counts as the user's when any of its events "
                    "carries the `user_id`. An unknown user is `deleted_events: 0`."),
    ("POST", "/alerts/rules"): Operation(
        "Create an alert rule (admin key)", {201: {JSON: alerts.RuleDetail}},
        request={JSON: Rule}, errors=(409,),
        description="A webhook is posted when a group starts to satisfy the rule and when it "
                    "stops. The secret is the HMAC key of `x-llm-metrics-signature`; it is "
                    "never shown again. 400 names the invalid field in `details[0].path`."),
    ("GET", "/alerts/rules"): Operation("Every alert rule", {200: {JSON: alerts.RuleList}}),
    ("GET", "/alerts/rules/{name}"): Operation(
        "One alert rule with the state of each group it has seen firing",
        {200: {JSON: alerts.RuleDetail}}, errors=(404,)),
    ("DELETE", "/alerts/rules/{name}"): Operation(
        "Delete an alert rule, its states and its pending deliveries (admin key)",
        {204: {}}, errors=(404,)),
    ("GET", "/alerts"): Operation(
        "Every group now firing, with its value and since when", {200: {JSON: alerts.AlertList}}),
    ("GET", "/alerts/deliveries"): Operation(
        "The webhook delivery log, newest first", {200: {JSON: alerts.DeliveryList}},
        query=(Param("limit", Limit, "deliveries returned (default 100)"),)),
    ("GET", "/openapi.json"): Operation(
        "This document (OpenAPI 3.1)", {200: {JSON: Raw({"type": "object"})}}),
    ("GET", "/docs"): Operation(
        "A readable page of this document (HTML)", {200: {"text/html": TEXT}}),
}

_PARAM = re.compile(r"\{([^}:]+)\}")


def routes(app: web.Application) -> list[tuple[str, str]]:
    """(METHOD, path) of every route of `app`, in the router's order; HEAD mirrors of GET left
    out."""
    out = []
    for route in app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        out.append((route.method, route.resource.canonical))
    return out


def build(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`'s routes."""
    found = routes(app)
    types: list[Any] = [ErrorBody]
    for method_path in found:
        op = OPERATIONS.get(method_path)
        if op is None:
            continue
        for media in [*op.responses.values(), op.request or {}]:
            types.extend(t.type if isinstance(t, Sse) else t for t in media.values()
                         if not isinstance(t, Raw))
        types.extend(p.type for p in op.query)
    schemas, components = msgspec.json.schema_components(
        types, schema_hook=_schema_hook, ref_template="#/components/schemas/{name}")
    schema_of = dict(zip(map(_key, types), schemas))

    def schema(t: Any) -> dict[str, Any]:
        if isinstance(t, Raw):
            return t.schema
        if isinstance(t, Sse):
            # One event as Schemathesis and OpenAPI 3.2's itemSchema see it.
            return {"type": "object", "required": ["data"], "properties": {
                "event": {"const": t.event},
                "data": {"type": "string", "contentMediaType": JSON,
                         "contentSchema": schema_of[_key(t.type)]}}}
        return schema_of[_key(t)]

    def body(media: dict[str, Any]) -> dict[str, Any]:
        return {kind: {"schema": schema(t)} for kind, t in media.items()}

    error = {JSON: {"schema": schema_of[_key(ErrorBody)]}}
    config = app[keys.CONFIG]
    paths: dict[str, dict[str, Any]] = {}
    for method, path in found:
        op = OPERATIONS.get((method, path))
        names = _PARAM.findall(path)
        if op is None:
            op = Operation("(undocumented route: add it to service.openapi.OPERATIONS)",
                           {200: {}})
        responses: dict[str, Any] = {}
        for status, media in op.responses.items():
            responses[str(status)] = {"description": "success"}
            if media:
                responses[str(status)]["content"] = body(media)
        entry: dict[str, Any] = {"summary": op.summary,
                                 "operationId": _operation_id(method, path),
                                 "responses": responses}
        if op.description:
            entry["description"] = op.description
        parameters = [{"name": n, "in": "path", "required": True,
                       "schema": {"type": "string", "minLength": 1}} for n in names]
        parameters += [{"name": p.name, "in": "query", "required": p.required,
                        "description": p.description, "schema": schema_of[_key(p.type)]}
                       for p in op.query]
        if parameters:
            entry["parameters"] = parameters
        if op.request is not None:
            entry["requestBody"] = {"required": True, "content": body(op.request)}
        statuses = set(op.errors)
        if not is_public(path, config):
            statuses.update(COMMON_ERRORS)
            entry["security"] = [{"internalAuth": []}]
        else:
            entry["security"] = []
        if op.query or names or op.request is not None:
            statuses.add(400)
        for status in sorted(statuses):
            entry["responses"][str(status)] = {"description": ERRORS[status], "content": error}
        paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": VERSION,
                 "description": "Records every LLM request an application makes and serves "
                                "cost, latency and failure metrics. Errors are always JSON "
                                "`{\"error\", \"details\"}`."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"internalAuth": {"type": "apiKey", "in": "header",
                                                 "name": HEADER}},
        },
    }


def undocumented(app: web.Application) -> list[tuple[str, str]]:
    """Routes of `app` that have no entry in `OPERATIONS`."""
    return [r for r in routes(app) if r not in OPERATIONS]


def _schema_hook(t: type) -> dict[str, Any]:
    # A field typed `object` holds any JSON value (e.g. the stream's embedded metrics bodies).
    if t is object:
        return {"description": "any JSON value"}
    raise NotImplementedError


def _key(t: Any) -> str:
    # Annotated/Union objects are not always hashable or equal by identity: key them by repr.
    return repr(t)


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    return f"{method.lower()}_{words}"


async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of this service."""
    return web.Response(body=msgspec.json.encode(build(request.app)), content_type=JSON)


async def get_docs(request: web.Request) -> web.Response:
    """A self-contained HTML page that renders `/openapi.json` (no CDN, no external assets)."""
    return web.Response(body=DOCS_PAGE.read_bytes(), content_type="text/html", charset="utf-8")
