"""The `x-internal-auth` check, as a middleware factory."""

from __future__ import annotations

import hmac

from aiohttp import web

from service.errors import json_error

HEADER = "x-internal-auth"
PUBLIC_PATHS = frozenset({"/health", "/dashboard"})


def auth_middleware(secret: str):
    """Require the secret on every route but the public ones; compare in constant time."""
    expected = secret.encode()

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        given = request.headers.get(HEADER)
        if given is None:
            return json_error(401, f"missing {HEADER} header")
        if not hmac.compare_digest(given.encode(), expected):
            return json_error(401, f"wrong {HEADER} header")
        return await handler(request)

    return middleware
