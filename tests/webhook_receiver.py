"""A real webhook receiver for tests: an aiohttp server on its own thread and event loop, so
blocking test code (and a server in another process) can talk to it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass

from aiohttp import web

from tests.http_stubs import ThreadedApp


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    at: float

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def delivery_id(self) -> str:
        return self.headers["x-llm-metrics-delivery"]

    def signature_ok(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-llm-metrics-signature", ""), expected)


class Receiver:
    """Records every POST; answers with the next of `script` statuses, then `default`."""

    def __init__(self, default: int = 200, delay_s: float = 0.0):
        self.default = default
        self.delay_s = delay_s
        self.script: list[int] = []
        self.received: list[Received] = []
        self._lock = threading.Lock()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._server = ThreadedApp(app)
        self.port = self._server.port
        self.url = f"{self._server.url}/hook"

    def __enter__(self) -> "Receiver":
        self._server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._server.__exit__(*exc)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        with self._lock:
            status = self.script.pop(0) if self.script else self.default
            self.received.append(Received(request.path, dict(request.headers), body, status,
                                          time.monotonic()))
        return web.Response(status=status, text="ok" if status < 300 else "no")

    def answer(self, *statuses: int, then: int | None = None) -> None:
        """Answer the next requests with `statuses`, and later ones with `then`."""
        with self._lock:
            self.script = list(statuses)
            if then is not None:
                self.default = then

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def _matching(self, matching: dict) -> list[Received]:
        if not matching:
            return self.requests()
        return [r for r in self.requests() if all(r.json.get(k) == v for k, v in matching.items())]

    def _fail(self, count: int, timeout: float, matching: dict):
        got = [r.json for r in self.requests()]
        shown = f"{got[:20]}" + (f" and {len(got) - 20} more" if len(got) > 20 else "")
        raise AssertionError(f"expected {count} webhook requests matching {matching} within "
                             f"{timeout} s, got {shown}")

    def wait_for(self, count: int, timeout: float = 15.0, **matching) -> list[Received]:
        """Block until `count` requests whose JSON body has the `matching` fields arrived."""
        deadline = time.monotonic() + timeout
        while len(found := self._matching(matching)) < count:
            if time.monotonic() > deadline:
                self._fail(count, timeout, matching)
            time.sleep(0.05)
        return found

    async def until(self, count: int, timeout: float = 15.0, **matching) -> list[Received]:
        """`wait_for` for async tests: waits without blocking the test's event loop."""
        deadline = time.monotonic() + timeout
        while len(found := self._matching(matching)) < count:
            if time.monotonic() > deadline:
                self._fail(count, timeout, matching)
            await asyncio.sleep(0.05)
        return found
