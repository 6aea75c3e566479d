"""Arize OpenInference's openinference-instrumentation-openai, session and user attached."""

from functools import partial

from openinference.instrumentation import using_attributes
from openinference.instrumentation.openai import OpenAIInstrumentor

import scenario

provider = scenario.tracer_provider()
OpenAIInstrumentor().instrument(tracer_provider=provider)
scenario.openai_calls(scenario.openai_client(),
                      around=partial(using_attributes, session_id=scenario.SESSION,
                                     user_id=scenario.USER))
provider.shutdown()
