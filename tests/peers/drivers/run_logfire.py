"""Pydantic Logfire's OpenAI instrumentation, exporting OTLP to the service (not to Logfire)."""

import os

import logfire

import scenario

os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = scenario.SERVICE + "/v1/traces"
os.environ["OTEL_EXPORTER_OTLP_HEADERS"] = f"x-internal-auth={scenario.KEY}"
logfire.configure(send_to_logfire=False, console=False)
client = scenario.openai_client()
logfire.instrument_openai(client)
with logfire.span("conversation"):
    scenario.openai_calls(client)
logfire.force_flush()
logfire.shutdown()
