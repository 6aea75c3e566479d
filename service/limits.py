"""Limits that protect the service from a client: per-key rate limits and slow request bodies.

Both are middleware factories, installed after `auth_middleware` (they need to know the key).
The other limits live where they act: the body size in `create_app` (`client_max_size`), the
events per request in `ingest.parse_body`, header sizes and the header timeout in `serve`.
"""

from __future__ import annotations

import asyncio
import math
import time

from aiohttp import web

from service.auth import PRINCIPAL
from service.errors import json_error


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; `take()` spends one or says how long to
    wait for it."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()

    def take(self) -> float:
        """0 when a token was taken; otherwise the seconds until one will be there."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


def rate_limit_middleware(rate: float, burst: int = 0):
    """429 + `Retry-After` when a key sends more than `rate` requests a second (after a burst of
    `burst`, default one second's worth). One bucket per configured key, so memory is bounded
    by the configuration; unauthenticated requests never reach it."""
    burst = burst or max(1, math.ceil(rate))
    buckets: dict[str, TokenBucket] = {}

    @web.middleware
    async def middleware(request: web.Request, handler):
        principal = request.get(PRINCIPAL)
        if principal is None:
            return await handler(request)
        bucket = buckets.get(principal.name)
        if bucket is None:
            bucket = buckets[principal.name] = TokenBucket(rate, burst)
        wait = bucket.take()
        if wait:
            return json_error(
                429, f"rate limit exceeded for {principal.name}: {rate:g} requests/s "
                     f"(burst {burst}); retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return await handler(request)

    return middleware


def body_timeout_middleware(seconds: float):
    """Read the whole body within `seconds`, or answer 408 and close the connection.

    aiohttp has no body read timeout of its own: without this a client sending one byte a
    minute holds a request (and its memory) open forever. The body is read here, so the
    handler's `request.read()` returns it at once.
    """

    @web.middleware
    async def middleware(request: web.Request, handler):
        # A body already received whole (a small one comes with the headers) needs no timer:
        # arming one cost about a tenth of the event loop's time under single-event ingest.
        if request.body_exists and not request.content.is_eof():
            try:
                async with asyncio.timeout(seconds):
                    await request.read()
            except TimeoutError:
                response = json_error(408, f"request body not received within {seconds:g} s")
                response.force_close()
                return response
        return await handler(request)

    return middleware
