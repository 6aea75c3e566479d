"""Instrument an application for LLM Metrics in two lines.

```python
from llm_metrics_client import MetricsClient
metrics = MetricsClient("http://127.0.0.1:8001", secret="...")
with metrics.track("session-1", "gpt-4o") as req:
    ...  # call the model; set req.prompt_tokens, req.completion_tokens, req.tool_calls
```

`AsyncMetricsClient` is the asyncio flavour; `llm_metrics_client.openai.instrument` and
`llm_metrics_client.anthropic.instrument` wrap an OpenAI / Anthropic client so every call is
tracked with no other change. The sync client needs only the standard library; the async one
needs aiohttp (`pip install "./client[async]"`), imported only when it is first used.
"""

from llm_metrics_client._core import Backoff, Stats
from llm_metrics_client.sync import MetricsClient
from llm_metrics_client.tracking import Request

__all__ = ["AsyncMetricsClient", "Backoff", "MetricsClient", "Request", "Stats"]


def __getattr__(name: str):
    # aiohttp is an extra: importing the package (and the sync client) must not need it.
    if name == "AsyncMetricsClient":
        try:
            from llm_metrics_client.aio import AsyncMetricsClient
        except ImportError as exc:
            raise ImportError(f"AsyncMetricsClient needs aiohttp ({exc}): "
                              "pip install 'llm-metrics-client[async]'") from exc
        return AsyncMetricsClient
    raise AttributeError(f"module 'llm_metrics_client' has no attribute {name!r}")
