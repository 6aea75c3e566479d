"""The dashboard page, served with headers that confine it.

The page's only script and style are inline, so the Content-Security-Policy allows exactly those
two blocks by hash and nothing else: no other script, no inline handler, no connection but to
this service, no framing (clickjacking), no form posting elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from aiohttp import web

PAGE = (Path(__file__).with_name("static") / "dashboard.html").read_bytes()


def _sources(tag: str) -> str:
    blocks = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), PAGE, re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'"
                    for b in blocks) or "'none'"


CSP = "; ".join([
    "default-src 'none'",
    f"script-src {_sources('script')}",
    f"style-src {_sources('style')}",
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def get_dashboard(request: web.Request) -> web.Response:
    """The dashboard page: public, holds no secret (it asks for it and keeps it in the tab)."""
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8", headers=HEADERS)
