"""The load generator: a separate process that replays prepared HTTP requests over keep-alive
connections and reports throughput and latency as JSON on stdout.

A minimal HTTP/1.1 client on a bare asyncio Protocol, so that the generator costs far less CPU
per request than the servers it measures (aiohttp's client would be the bottleneck on 2 cores).

    python -m bench.loadgen --port 8001 --requests FILE --connections 64 [--seconds 5]

`FILE` is a msgpack list of `[method, path, content_type, body]`; connections take the next
request from one shared iterator (cycling through the file with `--cycle`), for `--seconds`
or until the file is used up. Warm-up requests come from the same iterator, so a request
that must be sent once (a new event) is never sent twice.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time

import msgspec

SECRET = "secret"


class Request(msgspec.Struct, array_like=True):
    method: str
    path: str
    content_type: str = ""
    body: bytes = b""


class Report(msgspec.Struct):
    requests: int
    seconds: float
    rate: float
    statuses: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def wire(request: Request) -> bytes:
    head = f"{request.method} {request.path} HTTP/1.1\r\nHost: localhost\r\nx-internal-auth: {SECRET}\r\n"
    if request.method == "POST":
        head += f"content-type: {request.content_type}\r\ncontent-length: {len(request.body)}\r\n"
    return (head + "\r\n").encode() + request.body


def save(path: str, requests: list[Request]) -> None:
    with open(path, "wb") as f:
        f.write(msgspec.msgpack.encode(requests))


class _Connection(asyncio.Protocol):
    """One keep-alive connection: send a request, wait for the whole response, send the next.

    A bare Protocol (no streams, no response objects) so that a request costs the generator
    a few microseconds: it must outrun the servers it measures on the same two cores.
    """

    def __init__(self, source, latencies: list[float], statuses: dict[str, int],
                 deadline: float | None, closed: asyncio.Future):
        self._source, self._latencies, self._statuses = source, latencies, statuses
        self._deadline, self._closed = deadline, closed
        self._buffer = b""
        self._need = 0  # bytes of the whole response, once its head is in
        self._started = 0.0

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._send()

    def _send(self) -> None:
        raw = next(self._source, None)
        if raw is None or (self._deadline is not None and time.perf_counter() >= self._deadline):
            self._transport.close()
            return
        self._buffer, self._need = b"", 0
        self._started = time.perf_counter()
        self._transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._need:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at)
                length = int(head[at + 15:line_end if line_end > 0 else None])
            self._need = end + 4 + length
        if len(self._buffer) >= self._need:
            self._latencies.append(time.perf_counter() - self._started)
            status = self._buffer[9:12].decode()
            self._statuses[status] = self._statuses.get(status, 0) + 1
            self._send()

    def connection_lost(self, exc) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


async def _connection(port, source, latencies, statuses, deadline):
    loop = asyncio.get_running_loop()
    closed = loop.create_future()
    await loop.create_connection(
        lambda: _Connection(source, latencies, statuses, deadline, closed), "127.0.0.1", port)
    await closed


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(port: int, requests: list[bytes], connections: int, seconds: float | None,
              warmup: float, cycle: bool) -> Report:
    """Send `requests` over `connections` for `seconds` (None: until all are sent)."""
    source = itertools.cycle(requests) if cycle else iter(requests)
    if warmup > 0:
        end = time.perf_counter() + warmup
        await asyncio.gather(*(_connection(port, source, [], {}, end) for _ in range(connections)))
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    started = time.perf_counter()
    deadline = started + seconds if seconds else None
    await asyncio.gather(*(_connection(port, source, latencies, statuses, deadline)
                           for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Report(
        requests=len(latencies), seconds=elapsed, rate=len(latencies) / elapsed,
        statuses=statuses, p50_ms=_percentile(latencies, 0.50), p90_ms=_percentile(latencies, 0.90),
        p99_ms=_percentile(latencies, 0.99), max_ms=_percentile(latencies, 1.0),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", required=True, help="msgpack file of requests")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="stop after this long (0: when the requests are used up)")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds of unmeasured load first")
    parser.add_argument("--cycle", action="store_true", help="start over when the file is used up")
    args = parser.parse_args(argv)
    with open(args.requests, "rb") as f:
        requests = [wire(r) for r in msgspec.msgpack.decode(f.read(), type=list[Request])]
    report = asyncio.run(run(args.port, requests, args.connections, args.seconds or None,
                             args.warmup, args.cycle))
    sys.stdout.buffer.write(msgspec.json.encode(report) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
