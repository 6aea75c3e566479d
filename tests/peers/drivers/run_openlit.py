"""openlit on both SDKs, exporting traces (and its logs and metrics) to the service."""

import json
import tempfile

import openlit

import scenario

# A local price table: without one openlit fetches its own from the internet.
prices = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
json.dump({}, prices)
prices.close()
openlit.init(otlp_endpoint=scenario.SERVICE, otlp_headers={"x-internal-auth": scenario.KEY},
             application_name="driver", pricing_json=prices.name)
scenario.openai_calls(scenario.openai_client())
scenario.anthropic_calls(scenario.anthropic_client())
# openlit batches spans and metrics: flush the global providers before exiting.
from opentelemetry import metrics, trace  # noqa: E402

trace.get_tracer_provider().shutdown()
provider = metrics.get_meter_provider()
if hasattr(provider, "shutdown"):
    provider.shutdown()
