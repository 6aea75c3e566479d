"""traceloop-sdk (OpenLLMetry's SDK) on `openai`, session and user as association properties."""

import os

os.environ["TRACELOOP_TELEMETRY"] = "false"  # its usage telemetry would go to the internet

from traceloop.sdk import Traceloop  # noqa: E402

import scenario  # noqa: E402

Traceloop.init(app_name="driver", api_endpoint=scenario.SERVICE,
               headers={"x-internal-auth": scenario.KEY}, telemetry_enabled=False,
               disable_batch=False)
Traceloop.set_association_properties({"session_id": scenario.SESSION,
                                      "user_id": scenario.USER})
scenario.openai_calls(scenario.openai_client())
from opentelemetry import trace  # noqa: E402

trace.get_tracer_provider().force_flush()
