"""Small real HTTP servers for client tests: an OpenAI-compatible stub and a flaky proxy.

Each runs an aiohttp app on 127.0.0.1 in its own thread and event loop, so blocking code under
test (the sync client, the sync `openai` client) can talk to it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
import uuid

from aiohttp import ClientSession, web

from tests.server import free_port

# What the stubs received, for assertions: the OpenAI stub's request bodies, the proxy's batches.
REQUESTS = web.AppKey("requests", list)
SEEN = web.AppKey("seen", list)


class ThreadedApp:
    """Serve `app` on 127.0.0.1:`port` from a background thread (a context manager)."""

    def __init__(self, app: web.Application, port: int | None = None):
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> "ThreadedApp":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()


# ---- an OpenAI-compatible chat completions endpoint ----------------------------------------

FIRST_TOKEN_DELAY_S = 0.15
WORDS = ["Hello", " from", " the", " stub", "."]


def _chunk(model: str, delta: dict, finish: str | None = None, usage: dict | None = None,
           choices: bool = True, id: str = "chatcmpl-stub") -> bytes:
    body = {"id": id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26,
         "prompt_tokens_details": {"cached_tokens": 8},
         "completion_tokens_details": {"reasoning_tokens": 2}}


def openai_stub() -> web.Application:
    """`POST /v1/chat/completions`: model `rate-limited` answers 429; `tools` gets a tool call;
    `stream` sends words after `FIRST_TOKEN_DELAY_S`, and usage only when asked for it."""
    app = web.Application()
    app[REQUESTS] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        app[REQUESTS].append(body)
        model = body["model"]
        if model == "rate-limited":
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit",
                                                "code": "rate_limit_exceeded"}}, status=429)
        wants_tool = bool(body.get("tools"))
        # A fresh id per call, as the real API: instrumentations report it as gen_ai.response.id.
        call_id = f"chatcmpl-{uuid.uuid4().hex}"
        if not body.get("stream"):
            message = {"role": "assistant", "content": None if wants_tool else "".join(WORDS)}
            if wants_tool:
                message["tool_calls"] = [{"id": "call_1", "type": "function", "function": {
                    "name": "lookup", "arguments": "{}"}}]
            return web.json_response({
                "id": call_id, "object": "chat.completion", "created": int(time.time()),
                "model": model, "usage": USAGE,
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if wants_tool else "stop"}]})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_chunk(model, {"role": "assistant", "content": ""}, id=call_id))
        await asyncio.sleep(FIRST_TOKEN_DELAY_S)
        for word in WORDS:
            await response.write(_chunk(model, {"content": word}, id=call_id))
        await response.write(_chunk(model, {}, finish="stop", id=call_id))
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(_chunk(model, {}, usage=USAGE, choices=False, id=call_id))
        await response.write(b"data: [DONE]\n\n")
        return response

    app.router.add_post("/v1/chat/completions", completions)
    return app


# ---- an Anthropic-compatible messages endpoint ----------------------------------------------

# Anthropic's input_tokens excludes the cache: the prompt is input + cache read + cache write.
ANTHROPIC_USAGE = {"input_tokens": 30, "output_tokens": 7, "cache_read_input_tokens": 100,
                   "cache_creation_input_tokens": 50}
ANTHROPIC_PROMPT_TOKENS = 180


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def anthropic_stub() -> web.Application:
    """`POST /v1/messages`: model `rate-limited` answers 429; `tools` gets a `tool_use` block;
    `stream` sends text deltas after `FIRST_TOKEN_DELAY_S`, usage in `message_start` (input and
    cache) and `message_delta` (output), as the real API does."""
    app = web.Application()
    app[REQUESTS] = []

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        app[REQUESTS].append(body)
        model = body["model"]
        if model == "rate-limited":
            return web.json_response({"type": "error", "error": {
                "type": "rate_limit_error", "message": "slow down"}}, status=429)
        wants_tool = bool(body.get("tools"))
        content = ([{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}]
                   if wants_tool else [{"type": "text", "text": "".join(WORDS)}])
        stop = "tool_use" if wants_tool else "end_turn"
        message_id = f"msg_{uuid.uuid4().hex}"
        if not body.get("stream"):
            return web.json_response({
                "id": message_id, "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop, "stop_sequence": None,
                "usage": ANTHROPIC_USAGE})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        start_usage = {**ANTHROPIC_USAGE, "output_tokens": 1}
        await response.write(_sse("message_start", {"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}}))
        await response.write(_sse("content_block_start", {
            "type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}))
        await asyncio.sleep(FIRST_TOKEN_DELAY_S)
        for word in WORDS:
            await response.write(_sse("content_block_delta", {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": word}}))
        await response.write(_sse("content_block_stop", {"type": "content_block_stop",
                                                         "index": 0}))
        await response.write(_sse("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": ANTHROPIC_USAGE["output_tokens"]}}))
        await response.write(_sse("message_stop", {"type": "message_stop"}))
        return response

    app.router.add_post("/v1/messages", messages)
    return app


# ---- a proxy in front of the real service that loses some answers --------------------------

def flaky_proxy(target: str, failures: list[int]) -> web.Application:
    """Forward `POST /events` to `target`; for each status in `failures` (one per request, in
    order) answer that status instead. A status >= 1000 means: forward, commit, then answer
    `status - 1000` anyway (the reply is lost after the commit)."""
    app = web.Application()
    app[SEEN] = []

    async def events(request: web.Request) -> web.Response:
        body = await request.read()
        app[SEEN].append(json.loads(body))
        plan = failures.pop(0) if failures else None
        if plan is not None and plan < 1000:
            return web.json_response({"error": "injected"}, status=plan,
                                     headers={"Retry-After": "0"} if plan in (429, 503) else None)
        async with ClientSession() as session:
            async with session.post(target + "/events", data=body, headers={
                    k: v for k, v in request.headers.items()
                    if k.lower() in ("x-internal-auth", "content-type")}) as reply:
                status, raw = reply.status, await reply.read()
        if plan is not None:
            return web.json_response({"error": "injected after commit"}, status=plan - 1000)
        return web.Response(body=raw, status=status, content_type="application/json")

    app.router.add_post("/events", events)
    return app


def read_log(url: str, secret: str = "secret") -> list[dict]:
    """Every stored event, through `GET /events`."""
    events, after = [], 0
    while True:
        req = urllib.request.Request(f"{url}/events?after={after}&limit=10000",
                                     headers={"x-internal-auth": secret})
        with urllib.request.urlopen(req, timeout=10) as r:
            lines = [json.loads(x) for x in r.read().splitlines() if x]
            last = int(r.headers["x-last-position"])
        if last == after:
            return events
        events += lines
        after = last
