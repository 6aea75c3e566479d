"""`GET /prices`, `PUT /prices`, `DELETE /prices`: the price table in force, changed live."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from events.store import Issue
from projections.prices import PriceError, PriceSaved, PriceTable
from service import keys
from service.ingest import JSON_TYPES, media_type
from service.problems import ApiError

_encode = msgspec.json.Encoder().encode


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


async def get_prices(request: web.Request) -> web.Response:
    """The table every cost is computed with, every default filled in, with its digest."""
    return _json(request.app[keys.MODELS].prices.to_json())


async def put_prices(request: web.Request) -> web.Response:
    """Replace the table (saved durably, then applied to all of history); 400 names the bad
    field and changes nothing."""
    kind = media_type(request.headers.get("content-type", ""))
    if kind not in JSON_TYPES:
        raise ApiError(415, f"unsupported content-type {kind or '(none)'!r}: send the price "
                            "table as application/json")
    body = await request.read()
    try:
        # Parsing a large table is CPU work: off the event loop.
        table = await asyncio.to_thread(PriceTable.from_json, body)
    except PriceError as exc:
        raise ApiError(400, str(exc), _details(exc)) from None
    await request.app[keys.PRICE_BOOK].put(table, request.app[keys.MODELS])
    return _json(_encode(PriceSaved(table.digest, len(table))))


async def delete_prices(request: web.Request) -> web.Response:
    """Forget the table set by `PUT /prices`: back to `LLM_METRICS_PRICES` or the shipped one."""
    try:
        table = await request.app[keys.PRICE_BOOK].reset(request.app[keys.MODELS])
    except PriceError as exc:
        raise ApiError(409, f"the saved table stays in force: {exc}", _details(exc)) from None
    return _json(_encode(PriceSaved(table.digest, len(table))))


def _details(exc: PriceError) -> list[Issue]:
    return [Issue(0, p.path, p.message) for p in exc.problems]
