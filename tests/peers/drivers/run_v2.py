"""opentelemetry-instrumentation-openai-v2 (the official GenAI instrumentation) on `openai`."""

from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

import scenario

provider = scenario.tracer_provider()
OpenAIInstrumentor().instrument(tracer_provider=provider)
tracer = provider.get_tracer("driver")
# The official instrumentation has no session attribute: calls under one parent span share its
# trace id, which the service takes as the session.
with tracer.start_as_current_span("conversation"):
    scenario.openai_calls(scenario.openai_client())
provider.shutdown()
