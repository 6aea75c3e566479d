"""One HTTP exchange with a real server, keeping what `ServerProcess.request` drops: the headers,
and the choice of key (or none)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import NamedTuple

from tests.server import SECRET


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: object  # parsed JSON, or text

    @property
    def text(self) -> str:
        return json.dumps(self.body) if not isinstance(self.body, str) else self.body


def exchange(url: str, method: str, path: str, body=None, key: str | None = SECRET,
             headers: dict | None = None, timeout: float = 30) -> Answer:
    """`method url+path` with `key` in `x-internal-auth` (None: no header); JSON-encodes `body`
    unless it is bytes."""
    headers = dict(headers or {})
    if key is not None:
        headers["x-internal-auth"] = key
    data = body
    if body is not None and not isinstance(body, bytes):
        data = json.dumps(body).encode()
        headers.setdefault("content-type", "application/json")
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, got = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, raw, got = e.code, e.read(), dict(e.headers)
    try:
        return Answer(status, got, json.loads(raw))
    except ValueError:
        return Answer(status, got, raw.decode(errors="replace"))
