"""`POST /v1/traces` against the real OpenTelemetry SDK and its OTLP/HTTP exporters.

The exporters run in this process and the service in its own (tests/server.py), as in
production; what they stored is read back through the JSON API.
"""

from __future__ import annotations

import gzip
import json
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter as JsonExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as ProtoExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from service import keys
from service.app import create_app
from tests.conftest import AUTH
from tests.fixtures.genai_spans import (
    BASE_NS,
    CONVERSATION,
    EXPECTED,
    EXPECTED_EMBEDDINGS,
    record_spans,
)
from tests.server import SECRET, ServerProcess

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "otlp_genai_export.json"
HEADERS = {"x-internal-auth": SECRET}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("otlp") / "events.db") as server:
        yield server


def session(server, session_id: str) -> dict:
    status, body = server.request("GET", f"/events/metrics/session/{session_id}")
    assert status == 200, body
    return body


def post(server, body: bytes, content_type: str, **headers) -> tuple[int, str, bytes]:
    req = urllib.request.Request(server.url + "/v1/traces", data=body, method="POST",
                                 headers={**HEADERS, "content-type": content_type, **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers["content-type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read()


def test_protobuf_exporter_with_gzip_maps_genai_spans(server):
    spans = record_spans(conversation="proto-conv")
    exporter = ProtoExporter(endpoint=server.url + "/v1/traces", headers=HEADERS,
                             compression=Compression.Gzip)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    got = session(server, "proto-conv")
    assert {k: got[k] for k in EXPECTED} == EXPECTED
    # The failed call has no response model: the requested one stands for it.
    assert got["models"] == ["gpt-4o", "gpt-4o-2024-08-06"]
    assert got["in_flight_requests"] == 0
    assert got["first_seen"] == "2026-01-01T00:00:00Z"

    # The embeddings span has no conversation id: its session is its trace id.
    embed = next(s for s in spans if s.name.startswith("embeddings"))
    got = session(server, format(embed.context.trace_id, "032x"))
    assert {k: got[k] for k in EXPECTED_EMBEDDINGS} == EXPECTED_EMBEDDINGS

    # A retried export stores nothing new: event ids come from the trace and span ids.
    _, before = server.request("GET", "/health")
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    _, after = server.request("GET", "/health")
    assert after["position"] == before["position"]
    exporter.shutdown()


def test_json_exporter_is_accepted_and_idempotent_with_protobuf(server):
    spans = record_spans(conversation="json-conv")
    exporter = JsonExporter(endpoint=server.url + "/v1/traces", headers=HEADERS)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    got = session(server, "json-conv")
    assert {k: got[k] for k in EXPECTED} == EXPECTED

    # The same spans over the other encoding map to the same events: still nothing new.
    _, before = server.request("GET", "/health")
    proto = ProtoExporter(endpoint=server.url + "/v1/traces", headers=HEADERS)
    assert proto.export(spans) == SpanExportResult.SUCCESS
    _, after = server.request("GET", "/health")
    assert after["position"] == before["position"]
    assert session(server, "json-conv") == got
    exporter.shutdown()
    proto.shutdown()


def test_recorded_json_export_fixture(server):
    body = FIXTURE.read_bytes()
    status, content_type, raw = post(server, body, "application/json")
    assert status == 200 and content_type.startswith("application/json")
    # The HTTP root span is not a GenAI span: it is ignored, and the answer says so.
    answer = json.loads(raw)
    assert answer["partialSuccess"]["rejectedSpans"] == 0
    assert "1 spans are not LLM calls" in answer["partialSuccess"]["errorMessage"]
    got = session(server, CONVERSATION)
    assert {k: got[k] for k in EXPECTED} == EXPECTED
    assert got["first_seen"] == "2026-01-01T00:00:00Z"
    assert got["last_seen"] == "2026-01-01T00:00:05.300000Z"

    # Every mapped field, as the log holds it.
    status, lines = server.request("GET", "/events?after=0&limit=1000")
    events = [json.loads(line) for line in lines.splitlines()] if isinstance(lines, str) else lines
    mine = [e for e in events if e["session_id"] == CONVERSATION]
    assert sorted(e["type"] for e in mine) == ["LLM_REQUEST_COMPLETED"] * 2 + \
        ["LLM_REQUEST_FAILED"] + ["LLM_REQUEST_STARTED"] * 3
    tool_call = next(e for e in mine if e.get("finish_reason") == "tool_calls")
    assert tool_call == {
        **tool_call,
        "model": "gpt-4o-2024-08-06", "provider": "openai", "user_id": "user-7",
        "duration_ms": 2500.0, "time_to_first_token_ms": 350.0, "prompt_tokens": 1200,
        "completion_tokens": 300, "cached_prompt_tokens": 200, "reasoning_tokens": 40,
        "has_tool_calls": True, "tool_calls": 1, "timestamp": "2026-01-01T00:00:02.500000Z",
    }
    assert tool_call["event_id"] == f"otlp-{_trace_of(body, tool_call['request_id'])}-" \
                                    f"{tool_call['request_id']}-e"
    failure = next(e for e in mine if e["type"] == "LLM_REQUEST_FAILED")
    assert failure["error_type"] == "RateLimitError"
    assert failure["error_message"] == "Rate limit reached for gpt-4o"
    assert failure["duration_ms"] == 300.0
    assert failure["model"] == "gpt-4o"  # no response model on a failed call: the request's

    # Posting the recording again (a retried export) changes nothing.
    assert post(server, body, "application/json")[0] == 200
    assert session(server, CONVERSATION) == got


def _trace_of(export: bytes, span_id: str) -> str:
    for rs in json.loads(export)["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                if span["spanId"] == span_id:
                    return span["traceId"]
    raise AssertionError(span_id)


def _export_with(spans_json: list[dict]) -> dict:
    return {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": spans_json}]}]}


def _span(span_id: str, **attributes) -> dict:
    attrs = [{"key": k, "value": {"stringValue": v} if isinstance(v, str) else {"intValue": v}}
             for k, v in attributes.items()]
    return {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": span_id, "name": "chat",
            "startTimeUnixNano": str(BASE_NS), "endTimeUnixNano": str(BASE_NS + 10**9),
            "attributes": attrs}


def test_partial_success_names_rejected_spans_in_the_request_encoding(server):
    good = _span("00000000000000a1", **{"gen_ai.operation.name": "chat",
                                          "gen_ai.request.model": "m", "session.id": "partial"})
    bad = _span("00000000000000a2", **{"gen_ai.operation.name": "chat",
                                         "gen_ai.request.model": "m", "session.id": "partial",
                                         "gen_ai.usage.input_tokens": -5})
    document = _export_with([good, bad])

    status, content_type, raw = post(server, json.dumps(document).encode(), "application/json")
    assert status == 200 and content_type.startswith("application/json")
    partial = json.loads(raw)["partialSuccess"]
    assert partial["rejectedSpans"] == 1
    assert "00000000000000a2" in partial["errorMessage"]
    assert "gen_ai.usage.input_tokens" in partial["errorMessage"]
    assert session(server, "partial")["successful_requests"] == 1

    # The same export as protobuf gets a protobuf answer; the good span is a duplicate now.
    bad["spanId"] = "00000000000000a3"
    message = ExportTraceServiceRequest()
    from google.protobuf import json_format
    from service.otlp import _hex_ids_to_base64
    _hex_ids_to_base64(document)
    json_format.ParseDict(document, message)
    status, content_type, raw = post(server, message.SerializeToString(),
                                     "application/x-protobuf")
    assert status == 200 and content_type == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(raw)
    assert answer.partial_success.rejected_spans == 1
    assert "gen_ai.usage.input_tokens" in answer.partial_success.error_message
    assert session(server, "partial")["successful_requests"] == 1


def test_a_span_conflicting_with_the_log_is_rejected_alone(server):
    first = _span("00000000000000b1", **{"gen_ai.request.model": "m", "session.id": "conflict",
                                          "gen_ai.usage.input_tokens": 10})
    post(server, json.dumps(_export_with([first])).encode(), "application/json")
    changed = dict(first, attributes=first["attributes"][:2] + [
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": 11}}])
    other = _span("00000000000000b2", **{"gen_ai.request.model": "m", "session.id": "conflict"})
    status, _, raw = post(server, json.dumps(_export_with([changed, other])).encode(),
                          "application/json")
    partial = json.loads(raw)["partialSuccess"]
    assert status == 200 and partial["rejectedSpans"] == 1
    assert "00000000000000b1" in partial["errorMessage"]
    assert "already stored with different content" in partial["errorMessage"]
    got = session(server, "conflict")
    assert got["successful_requests"] == 2 and got["total_prompt_tokens"] == 10


@pytest.mark.parametrize("body, content_type, status, words", [
    (b"{", "application/json", 400, "malformed JSON"),
    (b"\x0a\x05garbage", "application/x-protobuf", 400, "malformed OTLP protobuf"),
    (json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}).encode(),
     "application/json", 400, "$.resourceSpans[0].scopeSpans[0].spans[0].traceId"),
    (json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"startTimeUnixNano": "soon"}]}]}]}).encode(), "application/json", 400,
     "startTimeUnixNano"),
    (b"{}", "text/plain", 415, "application/x-protobuf"),
])
def test_malformed_exports_are_json_errors_naming_the_problem(server, body, content_type,
                                                               status, words):
    got, kind, raw = post(server, body, content_type)
    assert got == status and kind.startswith("application/json")
    assert words in json.loads(raw)["error"]


def test_gzip_json_and_auth(server):
    body = gzip.compress(json.dumps(_export_with([_span(
        "00000000000000c1", **{"gen_ai.request.model": "m", "session.id": "gz"})])).encode())
    status, _, raw = post(server, body, "application/json", **{"content-encoding": "gzip"})
    assert status == 200 and json.loads(raw) == {}
    assert session(server, "gz")["successful_requests"] == 1
    req = urllib.request.Request(server.url + "/v1/traces", data=b"{}", method="POST",
                                 headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(req, timeout=10)
    assert denied.value.code == 401


async def test_span_outcomes_are_counted(client):
    ignored = _span("00000000000000d1")
    genai = _span("00000000000000d2", **{"gen_ai.request.model": "m"})
    tool = dict(_span("00000000000000d3", **{"gen_ai.operation.name": "execute_tool"}),
                parentSpanId="00000000000000d2")
    r = await client.post("/v1/traces", json=_export_with([ignored, genai, tool]), headers=AUTH)
    assert r.status == 200
    counts = client.app[keys.OTLP_SPANS]
    assert counts == {"mapped": 1, "rejected": 0, "tool": 1, "ignored": 1, "merged": 0,
                      "log_records": 0, "metric_points": 0}
    r = await client.get(f"/events/metrics/session/{genai['traceId']}", headers=AUTH)
    assert (await r.json())["requests_with_tools"] == 1


async def test_an_export_over_the_events_limit_is_refused_whole(aiohttp_client, config):
    client = await aiohttp_client(create_app(replace(config, max_events=2)))
    spans = [_span(f"00000000000000e{i}", **{"gen_ai.request.model": "m"}) for i in range(3)]
    r = await client.post("/v1/traces", json=_export_with(spans), headers=AUTH)
    assert r.status == 413
    assert "3 spans in one export, more than the limit of 2" in (await r.json())["error"]
    r = await client.post("/v1/traces", json=_export_with(spans[:2]), headers=AUTH)
    assert r.status == 200


async def test_rules_beyond_the_schema_reject_the_span_naming_its_attribute(client):
    slow_first_token = _span("00000000000000f1", **{"gen_ai.request.model": "m"})
    slow_first_token["attributes"].append(
        {"key": "gen_ai.response.time_to_first_chunk", "value": {"doubleValue": 5.0}})
    fine = _span("00000000000000f2", **{"gen_ai.request.model": "m"})
    r = await client.post("/v1/traces", json=_export_with([slow_first_token, fine]),
                          headers=AUTH)
    partial = (await r.json())["partialSuccess"]
    assert partial["rejectedSpans"] == 1
    assert "00000000000000f1: gen_ai.response.time_to_first_chunk: time_to_first_token_ms " \
           "cannot exceed duration_ms" in partial["errorMessage"]
    assert client.app[keys.OTLP_SPANS]["mapped"] == 1


def test_every_attribute_the_mapping_reads_is_converted():
    import inspect
    import re

    from service import otlp_conventions, otlp_spans
    source = inspect.getsource(otlp_conventions) + inspect.getsource(otlp_spans)
    names = set(re.findall(r'"((?:gen_ai|session|user|enduser|error|llm|langfuse|traceloop|'
                           r'openinference|logfire|anthropic)\.[a-z_.]+)"', source))
    assert {"gen_ai.usage.input_tokens", "llm.token_count.prompt",
            "langfuse.observation.usage_details"} <= names
    assert names <= otlp_conventions.READ_ATTRIBUTES, names - otlp_conventions.READ_ATTRIBUTES


@pytest.mark.parametrize("path", ["/v1/traces", "/events"])
def test_a_body_that_is_not_what_its_content_encoding_says_is_a_json_400(server, path):
    req = urllib.request.Request(server.url + path, data=b"not gzip at all", method="POST",
                                 headers={**HEADERS, "content-type": "application/json",
                                          "content-encoding": "gzip"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(req, timeout=10)
    assert answer.value.code == 400
    assert json.loads(answer.value.read())["error"] == \
        "unreadable request body: Can not decode content-encoding: gzip"


def _basic(user: str, password: str) -> dict:
    import base64
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_langfuse_endpoint_takes_basic_auth_with_a_key_as_password_or_pair(
        aiohttp_client, config):
    app = create_app(replace(config, ingest_keys=("pk-lf-1:sk-lf-1", "ingest-2")))
    client = await aiohttp_client(app)
    path = "/api/public/otel/v1/traces"
    body = _export_with([_span("00000000000000a1", **{"gen_ai.request.model": "m"})])
    # The secret part is a key (the admin one), the whole pair is a key, or the password is.
    for headers in (_basic("pk-lf-anything", "secret"), _basic("pk-lf-1", "sk-lf-1"),
                    _basic("pk", "ingest-2")):
        r = await client.post(path, json=body, headers=headers)
        assert r.status == 200, await r.text()
    assert client.app[keys.OTLP_SPANS]["mapped"] == 3  # the same span each time: stored once
    r = await client.post(path, json=body, headers=_basic("pk", "wrong"))
    assert r.status == 401 and "Authorization" in (await r.json())["error"]
    r = await client.post(path, json=body, headers={"Authorization": "Basic !!!"})
    assert r.status == 401
    # Basic is for the OTLP routes only: other routes still need x-internal-auth.
    r = await client.get("/events/metrics", headers=_basic("pk", "secret"))
    assert r.status == 401


async def test_logs_and_metrics_are_accepted_and_counted(client):
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from google.protobuf import json_format

    logs = json_format.ParseDict({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"body": {"stringValue": "gen_ai.choice"}}, {"body": {"stringValue": "x"}}]}]}]},
        ExportLogsServiceRequest())
    r = await client.post("/v1/logs", data=logs.SerializeToString(),
                          headers={**AUTH, "content-type": "application/x-protobuf"})
    assert r.status == 200 and r.content_type == "application/x-protobuf"
    metrics = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": "gen_ai.client.token.usage", "histogram": {"dataPoints": [{}, {}, {}]}},
        {"name": "gen_ai.client.operation.duration", "sum": {"dataPoints": [{}]}}]}]}]}
    r = await client.post("/v1/metrics", json=metrics, headers=AUTH)
    assert r.status == 200 and await r.json() == {}
    pb = json_format.ParseDict(metrics, ExportMetricsServiceRequest()).SerializeToString()
    r = await client.post("/v1/metrics", data=pb,
                          headers={**AUTH, "content-type": "application/x-protobuf"})
    assert r.status == 200
    counts = client.app[keys.OTLP_SPANS]
    assert (counts["log_records"], counts["metric_points"]) == (2, 8)
    r = await client.post("/v1/logs", data=b"\xff\x00garbage",
                          headers={**AUTH, "content-type": "application/x-protobuf"})
    assert r.status == 400 and "malformed OTLP protobuf" in (await r.json())["error"]
    r = await client.post("/v1/metrics", json={"resourceMetrics": {}}, headers=AUTH)
    assert r.status == 400 and "resourceMetrics must be an array" in (await r.json())["error"]
    r = await client.post("/v1/logs", data=b"x", headers={**AUTH, "content-type": "text/plain"})
    assert r.status == 415
    assert (counts["log_records"], counts["metric_points"]) == (2, 8)


async def test_the_same_call_from_another_span_in_a_later_export_is_stored_once(client):
    attributes = {"gen_ai.request.model": "m", "gen_ai.response.id": "msg_once",
                  "gen_ai.usage.input_tokens": 3}
    sdk_span = _span("00000000000000b1", **attributes)
    # Another instrumentation's span of the same call: another trace, other timing.
    other = dict(_span("00000000000000b2", **attributes),
                 traceId="0af7651916cd43dd8448eb211c80319c",
                 endTimeUnixNano=str(BASE_NS + 2 * 10**9))
    for span in (sdk_span, other):
        r = await client.post("/v1/traces", json=_export_with([span]), headers=AUTH)
        assert r.status == 200 and "partialSuccess" not in await r.json()
    counts = client.app[keys.OTLP_SPANS]
    assert (counts["mapped"], counts["merged"], counts["rejected"]) == (1, 1, 0)
    r = await client.get("/events?after=0", headers=AUTH)
    stored = [line for line in (await r.text()).splitlines() if line]
    assert len(stored) == 2 and all('"request_id":"msg_once"' in line for line in stored)
