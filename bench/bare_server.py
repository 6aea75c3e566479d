"""The ceiling for HTTP figures: aiohttp with handlers that do nothing but answer.

Same routes and the same aiohttp server as the service, no middlewares, no store, no models:
whatever the service achieves is measured against what aiohttp itself does on this machine.

    python -m bench.bare_server --port 8002
"""

from __future__ import annotations

import argparse

from aiohttp import web

CREATED = b'{"appended":1,"duplicates":0,"last_position":1}'
# About the size of a real session's metrics, so both servers send the same bytes.
SESSION = (
    b'{"total_requests":5,"successful_requests":5,"failed_requests":0,"total_duration_ms":20405,'
    b'"average_duration_ms":4081.0,"total_prompt_tokens":10146,"total_completion_tokens":3811,'
    b'"total_tokens":13957,"average_tokens_per_request":2791.4,"requests_with_tools":1,'
    b'"in_flight_requests":0,"session_id":"00000001-5e55-4000-8000-00009e3779b1",'
    b'"first_seen":"2026-01-13T08:14:07Z","last_seen":"2026-01-13T08:15:29.655000Z",'
    b'"models":["gpt-4o"]}'
)


async def post_events(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=CREATED, status=201, content_type="application/json")


async def get_session(request: web.Request) -> web.Response:
    return web.Response(body=SESSION, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def create_app() -> web.Application:
    app = web.Application(client_max_size=10 * 1024**2)
    app.router.add_get("/health", health)
    app.router.add_post("/events", post_events)
    app.router.add_get("/events/metrics/session/{session_id:.+}", get_session)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
