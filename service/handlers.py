"""HTTP handlers: parse, call one function, encode. No business rules here."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from events.store import Rejected
from service import export, ingest, keys
from service.errors import json_error
from service.params import int_param
from service.stream import HEARTBEAT, HEARTBEAT_S
from service.tailer import Health, replica_health  # noqa: F401 (Health: openapi)

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
    batch = await ingest.parse_off_loop(body, request.headers.get("content-type", ""),
                                        max_events=request.app[keys.CONFIG].max_events)
    result = await request.app[keys.WRITER].submit(batch)
    if isinstance(result, Rejected):
        return json_error(409, f"conflict with events already stored: {result.details[0].message}",
                          result.details)
    return json_response(Ingested(result.appended, result.duplicates, result.last_position), 201)


async def health(request: web.Request) -> web.Response:
    """200 once replay is done (the server only listens after it); 503 with the reason when a
    replica of a shared log is not following it or is behind."""
    status, body = replica_health(request.app[keys.MODELS].position,
                                  request.app[keys.WRITER].follower)
    return json_response(body, status)


async def get_log(request: web.Request) -> web.Response:
    """`GET /events?after=&limit=&from=&to=&wait=`: stored events as NDJSON wire events.

    `x-last-position` is the position to pass as the next `after`; `x-log-position` is the end of
    the log. With `wait=N` (seconds) and nothing new yet, the answer waits for new events.
    """
    after = int_param(request, "after", 0, 0, None)
    limit = int_param(request, "limit", 1000, 1, 10_000)
    wait = int_param(request, "wait", 0, 0, 60)
    start_us = export.parse_time("from", request.query.get("from"))
    end_us = export.parse_time("to", request.query.get("to"))
    if wait:
        await request.app[keys.STREAM].wait_past(after, wait)
    page = await export.read_page(request.app[keys.STORE], after, limit, start_us, end_us)
    return web.Response(body=page.body, content_type="application/x-ndjson", headers={
        "x-last-position": str(page.last_position),
        "x-log-position": str(request.app[keys.MODELS].position),
    })


async def get_stream(request: web.Request) -> web.StreamResponse:
    """`GET /events/metrics/stream`: Server-Sent Events, one `metrics` event per update."""
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        # Reverse proxies (nginx) must not buffer: updates have to arrive as they are sent.
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    with request.app[keys.STREAM].subscribe() as mailbox:
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(mailbox.get(), HEARTBEAT_S)
                except TimeoutError:
                    frame = HEARTBEAT
                if frame is None:  # the service is shutting down
                    break
                await response.write(frame)
        except ConnectionError:
            pass  # the client went away
    return response
