"""Serve the app until SIGINT or SIGTERM, then shut it down once, to the end.

`aiohttp.web.run_app` turns every signal into an exception raised wherever the loop happens to
be: a second signal during shutdown (`make run` forwards its SIGTERM to the server, so a
`kill` of the process group delivers two) cancelled the cleanup half-way, left the log's
connection open, and the process hung at exit waiting for its thread. Here a signal only sets
an event; repeats are logged and change nothing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Callable

from aiohttp import web

log = logging.getLogger("service")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def serve_until_signalled(app: web.Application, host: str, port: int, *,
                                shutdown_timeout: float, on_listening: Callable[[], None],
                                **server_options: Any) -> None:
    """Start `app` on host:port, call `on_listening`, and on the first signal stop taking
    connections, give open requests `shutdown_timeout` seconds and run every cleanup."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def signalled(signum: signal.Signals) -> None:
        if stop.is_set():
            log.info("%s again: already shutting down (open requests finish, the log closes)",
                     signum.name)
        stop.set()

    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout,
                           **server_options)
    for signum in SIGNALS:
        loop.add_signal_handler(signum, signalled, signum)
    try:
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            on_listening()
            await stop.wait()
            log.info("shutting down")
        finally:
            await runner.cleanup()
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
