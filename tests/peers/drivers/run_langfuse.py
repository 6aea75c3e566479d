"""The Langfuse SDK (OTel-based) with its OpenAI integration, pointed at the service as if it were
a Langfuse host: its exporter posts to {host}/api/public/otel/v1/traces with
`Authorization: Basic base64(public_key:secret_key)`; the secret key is a service key."""

from langfuse import Langfuse, propagate_attributes
from langfuse.openai import OpenAI

import scenario

langfuse = Langfuse(public_key="pk-lf-test", secret_key=scenario.KEY, base_url=scenario.SERVICE,
                    tracing_enabled=True, timeout=60)
client = OpenAI(api_key="sk-test", base_url=scenario.OPENAI_URL + "/v1", max_retries=0)
with langfuse.start_as_current_observation(name="conversation"):
    with propagate_attributes(session_id=scenario.SESSION, user_id=scenario.USER):
        scenario.openai_calls(client)
langfuse.shutdown()
