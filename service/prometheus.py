"""`GET /metrics`: the read models in the Prometheus text format (OpenMetrics when asked).

Every figure comes from a projection: request, token and cost counters from the metrics
projection's per-model totals, latency histograms from `projections.prometheus`, log figures
from the read models' position and the writer. `prometheus_client` writes the formats and picks
one from the `Accept` header, so the output is what Prometheus' own client library would write.

Labels are `model`, `status`, `type` and `outcome` only: a label per session would make one
series per session (unbounded), so per-session series exist only with
`LLM_METRICS_PROM_SESSION_LABELS=1`, as separate `llm_session_*` families.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from projections.metrics import all_pending_counts, session_stats
from projections.prices import PICO
from projections.stats import cost as stats_cost
from projections.prometheus import BUCKETS_S, Histogram
from service import keys
from service.reads import cutoff_us

_LE = [repr(bound) for bound in BUCKETS_S] + ["+Inf"]
TOKEN_TYPES = ("prompt", "completion", "cached_prompt", "reasoning")


class ReadModelCollector(Collector):
    """Metric families computed from the application's read models at each scrape."""

    def __init__(self, app: web.Application):
        self.app = app

    def collect(self):
        app = self.app
        models = app[keys.MODELS]
        state = models.metrics.state
        requests = CounterMetricFamily(
            "llm_requests", "Finished LLM requests by model and status (ok: completed, "
                            "error: failed).", labels=["model", "status"])
        tokens = CounterMetricFamily(
            "llm_tokens", "Tokens of completed requests by model and type (cached_prompt is "
                          "part of prompt, reasoning part of completion).",
            labels=["model", "type"])
        cost = CounterMetricFamily(
            "llm_cost_usd", "Cost of completed requests in US dollars, by model (price table, "
                            "or the cost the caller sent).", labels=["model"])
        for model, stats in sorted(state.models.items()):
            requests.add_metric([model, "ok"], stats.successful)
            requests.add_metric([model, "error"], stats.failed)
            for kind, value in zip(TOKEN_TYPES, (stats.prompt_tokens, stats.completion_tokens,
                                                 stats.cached_prompt_tokens,
                                                 stats.reasoning_tokens)):
                tokens.add_metric([model, kind], value)
            cost.add_metric([model], sum(stats_cost(stats, models.prices.lookup(model))) / PICO)
        yield from (requests, tokens, cost)

        duration = HistogramMetricFamily(
            "llm_request_duration_seconds", "Duration of completed LLM requests.",
            labels=["model"])
        ttft = HistogramMetricFamily(
            "llm_time_to_first_token_seconds",
            "Time to the first token of completed (streamed) LLM requests that report it.",
            labels=["model"])
        for model, latency in sorted(models.prometheus.state.models.items()):
            duration.add_metric([model], *_histogram(latency.duration))
            if latency.time_to_first_token.count:
                ttft.add_metric([model], *_histogram(latency.time_to_first_token))
        yield from (duration, ttft)

        in_flight, stale = all_pending_counts(state, cutoff_us(app, models))
        yield GaugeMetricFamily("llm_in_flight_requests", "Requests started and not finished "
                                "yet (and not stale).", value=in_flight)
        yield GaugeMetricFamily("llm_stale_requests", "Requests started and not finished "
                                "after LLM_METRICS_STALE_AFTER.", value=stale)
        yield CounterMetricFamily("llm_sessions", "Sessions seen.", value=len(state.sessions))
        yield CounterMetricFamily(
            "llm_events_appended", "Events this process appended to the event log since it "
                                   "started.", value=app[keys.WRITER].appended)
        yield GaugeMetricFamily("llm_event_log_position",
                                "Position of the newest event applied to the read models.",
                                value=models.position)
        spans = CounterMetricFamily(
            "llm_otlp_spans", "Spans received on POST /v1/traces since the process started, by "
                              "outcome (mapped, rejected, tool: execute_tool spans, ignored: "
                              "not GenAI).", labels=["outcome"])
        for outcome, count in app[keys.OTLP_SPANS].items():
            spans.add_metric([outcome], count)
        yield spans

        if app[keys.CONFIG].prom_session_labels:
            yield from _session_families(state)


def _histogram(h: Histogram) -> tuple[list[tuple[str, int]], float]:
    return list(zip(_LE, h.cumulative())), h.sum_us / 1e6


def _session_families(state):
    requests = CounterMetricFamily("llm_session_requests", "Finished requests per session.",
                                   labels=["session_id", "model", "status"])
    tokens = CounterMetricFamily("llm_session_tokens", "Tokens of completed requests per "
                                 "session.", labels=["session_id", "model", "type"])
    for sid in state.order:
        for model, stats in sorted(session_stats(state.sessions[sid], state.names).items()):
            requests.add_metric([sid, model, "ok"], stats.successful)
            requests.add_metric([sid, model, "error"], stats.failed)
            tokens.add_metric([sid, model, "prompt"], stats.prompt_tokens)
            tokens.add_metric([sid, model, "completion"], stats.completion_tokens)
    return requests, tokens


def registry_for(app: web.Application) -> CollectorRegistry:
    """One registry per application (tests run many apps in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReadModelCollector(app))
    ProcessCollector(registry=registry)
    return registry


async def get_metrics(request: web.Request) -> web.Response:
    """The exposition, in the format the `Accept` header asks for (text 0.0.4 by default)."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    # A registry per scrape is cheap next to the scrape itself and keeps the app state plain.
    body = encode(registry_for(request.app))
    return web.Response(body=body, headers={"content-type": content_type})
