"""OpenLLMetry's opentelemetry-instrumentation-openai and -anthropic on both SDKs."""

from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor
from opentelemetry.instrumentation.openai import OpenAIInstrumentor

import scenario

provider = scenario.tracer_provider()
OpenAIInstrumentor().instrument(tracer_provider=provider)
AnthropicInstrumentor().instrument(tracer_provider=provider)
tracer = provider.get_tracer("driver")
with tracer.start_as_current_span("conversation"):
    scenario.openai_calls(scenario.openai_client())
    # The SDK's own spans stay off here (no `open_telemetry` option); anthropic.py covers both.
    scenario.anthropic_calls(scenario.anthropic_client())
provider.shutdown()
