"""Every piece of typed application state, in one place."""

from __future__ import annotations

import asyncio

from aiohttp import web

from events.store import EventStore
from projections.replay import ReadModels
from service.config import Config
from service.price_book import PriceBook
from service.stream import MetricsStream
from service.writer import Writer

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", EventStore)
MODELS = web.AppKey("models", ReadModels)
WRITER = web.AppKey("writer", Writer)
# OTLP span outcomes since the process started: service.otlp.SPAN_OUTCOMES -> count.
OTLP_SPANS = web.AppKey("otlp_spans", dict[str, int])
STREAM = web.AppKey("stream", MetricsStream)
# The saved price table (PUT /prices) and the configured one; changes one at a time.
PRICE_BOOK = web.AppKey("price_book", PriceBook)
# One log-folding question (as-of, time window) at a time: they are CPU-bound replays.
QUERY_LOCK = web.AppKey("query_lock", asyncio.Lock)
