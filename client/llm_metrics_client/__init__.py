"""Instrument an application for LLM Metrics in two lines.

```python
from client import MetricsClient
metrics = MetricsClient("http://127.0.0.1:8001", secret="...")
with metrics.track("session-1", "gpt-4o") as req:
    ...  # call the model; set req.prompt_tokens, req.completion_tokens, req.tool_calls
```

`AsyncMetricsClient` is the asyncio flavour; `client.openai.instrument` wraps an
`openai.OpenAI` / `AsyncOpenAI` client so every chat completion is tracked with no other change.
The client needs only the standard library (sync) and aiohttp (async).
"""

from client._core import Backoff, Stats
from client.aio import AsyncMetricsClient
from client.sync import MetricsClient
from client.tracking import Request

__all__ = ["AsyncMetricsClient", "Backoff", "MetricsClient", "Request", "Stats"]
