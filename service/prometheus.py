"""`GET /metrics`: the read models in the Prometheus text format (OpenMetrics when asked).

Every figure comes from the query layer (one query per model family, one for pending requests),
read before the families are written; `prometheus_client` writes the formats and picks one from
the `Accept` header, so the output is what Prometheus' own client library would write.

Labels are `model`, `status`, `type` and `outcome` only, and `model` takes at most
`LLM_METRICS_TOP_MODELS` values (the rest add up in `model="other"`): a label per session or an
unbounded model list would make a series per value. Per-session figures are in the JSON API
(`/events/metrics/query?group_by=session_id`).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from projections import query
from projections.query import Scope
from service import keys

# The OpenTelemetry GenAI semantic conventions' duration buckets, in seconds.
BUCKETS_S: tuple[float, ...] = tuple(round(0.01 * 2**i, 2) for i in range(14))
_BUCKETS_US: tuple[int, ...] = tuple(10_000 * 2**i for i in range(14))
_LE = [repr(bound) for bound in BUCKETS_S] + ["+Inf"]
TOKEN_TYPES = ("prompt", "completion", "cached_prompt", "cache_write_prompt", "reasoning")
_TOKEN_RAW = ("prompt", "completion", "cached", "cache_write", "reasoning")


class Figures:
    """What one scrape shows, read from the query layer before the families are written."""

    def __init__(self, models: list[dict], sessions: int, in_flight: int, stale: int,
                 position: int, appended: int, spans: dict[str, int], top: int):
        self.models, self.sessions, self.in_flight, self.stale = models, sessions, in_flight, stale
        self.position, self.appended, self.spans, self.top = position, appended, spans, top


async def read_figures(app: web.Application) -> Figures:
    facts = app[keys.MODELS]
    config = app[keys.CONFIG]
    timeout = config.query_timeout
    models, (sessions, in_flight, stale) = await asyncio.gather(
        query.model_figures(facts, _BUCKETS_US, config.top_models, timeout=timeout),
        query.pending_counts(facts, Scope(stale_after_us=int(config.stale_after * 1e6)),
                             timeout=timeout))
    return Figures(models, sessions, in_flight, stale, facts.position, app[keys.WRITER].appended,
                   dict(app[keys.OTLP_SPANS]), config.top_models)


class FiguresCollector(Collector):
    """Metric families from figures read once per scrape."""

    def __init__(self, figures: Figures):
        self.figures = figures

    def collect(self):
        f = self.figures
        requests = CounterMetricFamily(
            "llm_requests", "Finished LLM requests by model and status (ok: completed, "
                            f"error: failed); models past the {f.top} with most requests add "
                            "up in model=\"other\".", labels=["model", "status"])
        tokens = CounterMetricFamily(
            "llm_tokens", "Tokens of completed requests by model and type (cached_prompt and "
                          "cache_write_prompt are parts of prompt, reasoning of completion).",
            labels=["model", "type"])
        cost = CounterMetricFamily(
            "llm_cost_usd", "Cost of completed requests in US dollars, by model (price table "
                            "in force, or the cost the caller sent).", labels=["model"])
        duration = HistogramMetricFamily(
            "llm_request_duration_seconds", "Duration of completed LLM requests.",
            labels=["model"])
        ttft = HistogramMetricFamily(
            "llm_time_to_first_token_seconds",
            "Time to the first token of completed (streamed) LLM requests that report it.",
            labels=["model"])
        n = len(_BUCKETS_US)
        for row in f.models:
            model = row["model"]
            requests.add_metric([model, "ok"], row["ok"])
            requests.add_metric([model, "error"], row["failed"])
            for kind, raw in zip(TOKEN_TYPES, _TOKEN_RAW):
                tokens.add_metric([model, kind], row[raw])
            cost.add_metric([model], row["cost"] / query.PICO)
            counts = [row[f"d{i}"] for i in range(n)] + [row["ok"]]
            duration.add_metric([model], list(zip(_LE, counts)), row["duration"] / 1e6)
            if row["ttft_n"]:
                counts = [row[f"t{i}"] for i in range(n)] + [row["ttft_n"]]
                ttft.add_metric([model], list(zip(_LE, counts)), row["ttft_sum"] / 1e6)
        yield from (requests, tokens, cost, duration, ttft)
        yield GaugeMetricFamily("llm_in_flight_requests", "Requests started and not finished "
                                "yet (and not stale).", value=f.in_flight)
        yield GaugeMetricFamily("llm_stale_requests", "Requests started and not finished "
                                "after LLM_METRICS_STALE_AFTER.", value=f.stale)
        yield CounterMetricFamily("llm_sessions", "Sessions seen.", value=f.sessions)
        yield CounterMetricFamily(
            "llm_events_appended", "Events this process appended to the event log since it "
                                   "started.", value=f.appended)
        yield GaugeMetricFamily("llm_event_log_position",
                                "Position of the newest event applied to the read models.",
                                value=f.position)
        spans = CounterMetricFamily(
            "llm_otlp_spans", "Spans received on POST /v1/traces since the process started, by "
                              "outcome (mapped, rejected, tool: execute_tool spans, ignored: "
                              "not GenAI).", labels=["outcome"])
        for outcome, count in f.spans.items():
            spans.add_metric([outcome], count)
        yield spans


def registry_for(figures: Figures) -> CollectorRegistry:
    """A registry per scrape, holding that scrape's figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FiguresCollector(figures))
    ProcessCollector(registry=registry)
    return registry


async def get_metrics(request: web.Request) -> web.Response:
    """The exposition, in the format the `Accept` header asks for (text 0.0.4 by default)."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    body = encode(registry_for(await read_figures(request.app)))
    return web.Response(body=body, headers={"content-type": content_type})
