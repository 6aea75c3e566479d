"""The URL map."""

from __future__ import annotations

from aiohttp import web

from service import alert_handlers as alerts, dashboard, handlers, reads
from service import lifecycle_handlers as lifecycle, openapi, otlp, price_api, prometheus


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/health", handlers.health)
    app.router.add_post("/events", handlers.post_events)
    app.router.add_get("/events", handlers.get_log)
    app.router.add_delete("/events/sessions/{session_id:[\\s\\S]+}", lifecycle.delete_session)
    app.router.add_delete("/events/users/{user_id:[\\s\\S]+}", lifecycle.delete_user)
    app.router.add_get("/events/metrics", reads.get_global)
    app.router.add_get("/events/metrics/sessions", reads.get_sessions)
    app.router.add_get("/events/metrics/query", reads.get_query)
    app.router.add_get("/events/metrics/users", reads.get_users)
    app.router.add_get("/events/metrics/tags", reads.get_tags)
    app.router.add_get("/events/metrics/models", reads.get_models)
    # `[\s\S]+`: any character, newlines too (`.` stops at one: a 404 for a stored id).
    app.router.add_get("/events/metrics/models/{model:[\\s\\S]+}", reads.get_model)
    app.router.add_get("/events/metrics/users/{user_id:[\\s\\S]+}", reads.get_user)
    app.router.add_get("/events/metrics/timeseries", reads.get_timeseries)
    app.router.add_get("/events/metrics/stream", handlers.get_stream)
    app.router.add_get("/dashboard", dashboard.get_dashboard)
    # `[\s\S]+` (any character, newlines too) so that every stored session id, even one with
    # an encoded `/` or line break, reaches the handler.
    app.router.add_get("/events/metrics/session/{session_id:[\\s\\S]+}/requests",
                       reads.get_session_requests)
    app.router.add_get("/events/metrics/session/{session_id:[\\s\\S]+}", reads.get_session)
    app.router.add_post("/v1/traces", otlp.post_traces)
    # Langfuse's SDK exports to {host}/api/public/otel/v1/traces: point its host here.
    app.router.add_post("/api/public/otel/v1/traces", otlp.post_traces)
    app.router.add_post("/v1/logs", otlp.post_logs)
    app.router.add_post("/v1/metrics", otlp.post_metrics)
    app.router.add_get("/metrics", prometheus.get_metrics)
    app.router.add_get("/prices", price_api.get_prices)
    app.router.add_put("/prices", price_api.put_prices)
    app.router.add_delete("/prices", price_api.delete_prices)
    app.router.add_post("/alerts/rules", alerts.post_rule)
    app.router.add_get("/alerts/rules", alerts.get_rules)
    app.router.add_get("/alerts/rules/{name}", alerts.get_rule)
    app.router.add_delete("/alerts/rules/{name}", alerts.delete_rule)
    app.router.add_get("/alerts", alerts.get_alerts)
    app.router.add_get("/alerts/deliveries", alerts.get_deliveries)
    app.router.add_get("/openapi.json", openapi.get_openapi)
    app.router.add_get("/docs", openapi.get_docs)
