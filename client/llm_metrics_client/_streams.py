"""A provider's stream, wrapped so its request is reported when the stream ends.

The provider wrapper gives a `state` that learns from each item (`see(item)`, False to hide an
item the wrapper itself asked for), sends COMPLETED on `finish()`, and holds the `req`.
Everything else (attributes, context managers) behaves as the provider's own stream.
"""

from __future__ import annotations

from typing import Any


class TrackedStream:
    """A sync stream (`openai.Stream`, `anthropic.Stream`) that reports its request at its end."""

    def __init__(self, stream: Any, state: Any):
        self._stream = stream
        self._iterator = iter(stream)
        self._state = state

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            try:
                item = next(self._iterator)
            except StopIteration:
                self._state.finish()
                raise
            except BaseException as exc:
                self._state.req.fail(exc)
                raise
            if self._state.see(item):
                return item

    def close(self) -> None:
        self._state.req.fail("StreamClosed", "the stream was closed before its end")
        self._stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class AsyncTrackedStream:
    """An async stream (`openai.AsyncStream`, `anthropic.AsyncStream`), reported at its end."""

    def __init__(self, stream: Any, state: Any):
        self._stream = stream
        self._iterator = stream.__aiter__()
        self._state = state

    def __aiter__(self):
        return self

    async def __anext__(self):
        while True:
            try:
                item = await self._iterator.__anext__()
            except StopAsyncIteration:
                self._state.finish()
                raise
            except BaseException as exc:
                self._state.req.fail(exc)
                raise
            if self._state.see(item):
                return item

    async def close(self) -> None:
        self._state.req.fail("StreamClosed", "the stream was closed before its end")
        await self._stream.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
