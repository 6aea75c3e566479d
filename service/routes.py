"""The URL map."""

from __future__ import annotations

from aiohttp import web

from service import handlers
from service import otlp


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/health", handlers.health)
    app.router.add_post("/events", handlers.post_events)
    app.router.add_get("/events", handlers.get_log)
    app.router.add_get("/events/metrics", handlers.get_global)
    app.router.add_get("/events/metrics/sessions", handlers.get_sessions)
    app.router.add_get("/events/metrics/stream", handlers.get_stream)
    app.router.add_get("/dashboard", handlers.dashboard)
    # `.+` so that session ids containing an encoded `/` still reach the handler.
    app.router.add_get("/events/metrics/session/{session_id:.+}", handlers.get_session)
    app.router.add_post("/v1/traces", otlp.post_traces)
