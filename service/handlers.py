"""HTTP handlers: parse, call one function, encode. No business rules here."""

from __future__ import annotations

import msgspec
from aiohttp import web

from events.store import Rejected
from projections import views
from service import ingest, keys
from service.errors import json_error
from service.problems import ApiError

_encode = msgspec.json.Encoder().encode


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(body=_encode(value), status=status, content_type="application/json")


class Ingested(msgspec.Struct):
    appended: int
    duplicates: int
    last_position: int


async def post_events(request: web.Request) -> web.Response:
    """Ingest one event, a JSON array of events, or NDJSON; answer after the commit."""
    body = await request.read()
    batch = ingest.parse_body(body, request.headers.get("content-type", ""))
    result = await request.app[keys.WRITER].submit(batch)
    if isinstance(result, Rejected):
        return json_error(409, f"conflict with events already stored: {result.details[0].message}",
                          result.details)
    return json_response(Ingested(result.appended, result.duplicates, result.last_position), 201)


async def get_session(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    state = request.app[keys.MODELS].metrics.state
    session = state.sessions.get(session_id)
    if session is None:
        return json_error(404, f"no events for session {session_id!r}")
    return json_response(views.session_metrics(session_id, session))


async def get_sessions(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 100, 1, 1000)
    cursor = _int_param(request, "cursor", 0, 0, None)
    state = request.app[keys.MODELS].metrics.state
    return json_response(views.sessions_page(state, cursor, limit))


async def get_global(request: web.Request) -> web.Response:
    return json_response(views.global_metrics(request.app[keys.MODELS].metrics.state))


class Health(msgspec.Struct):
    status: str
    position: int


async def health(request: web.Request) -> web.Response:
    """200 once replay is done (the server only listens after it)."""
    return json_response(Health("ok", request.app[keys.MODELS].position))


def _int_param(request: web.Request, name: str, default: int, low: int, high: int | None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ApiError(400, f"query parameter {name!r} must be an integer {bounds}, "
                                      f"got {raw!r}")
    return value
