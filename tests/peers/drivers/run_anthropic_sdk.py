"""The anthropic SDK's own spans (on once a tracer provider exists), alone or with OpenLLMetry's
opentelemetry-instrumentation-anthropic as well (`WITH_INSTRUMENTATION=1`): then each call has
two root spans with the same gen_ai.response.id."""

import os

import scenario

provider = scenario.tracer_provider()
if os.environ.get("WITH_INSTRUMENTATION") == "1":
    from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor

    AnthropicInstrumentor().instrument(tracer_provider=provider)
scenario.anthropic_calls(scenario.anthropic_client())
provider.shutdown()
