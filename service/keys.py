"""Every piece of typed application state, in one place."""

from __future__ import annotations

from aiohttp import web

from events.store import EventStore
from projections.facts import Facts
from service.alerts.manager import Alerts
from service.config import Config
from service.lifecycle import Lifecycle
from service.price_book import PriceBook
from service.stream import MetricsStream
from service.writer import Writer

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", EventStore)
# The read side: request facts and the position they reflect.
MODELS = web.AppKey("models", Facts)
WRITER = web.AppKey("writer", Writer)
# OTLP span outcomes since the process started: service.otlp.SPAN_OUTCOMES -> count.
OTLP_SPANS = web.AppKey("otlp_spans", dict[str, int])
STREAM = web.AppKey("stream", MetricsStream)
# The saved price table (PUT /prices) and the configured one; changes one at a time.
PRICE_BOOK = web.AppKey("price_book", PriceBook)
# Alert rules, their states and the webhook outbox (service/alerts/).
ALERTS = web.AppKey("alerts", Alerts)
# Erasure and the retention sweep (service/lifecycle.py).
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
