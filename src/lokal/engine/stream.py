"""Sinks: how events leave the engine thread.

The engine calls ``sink.push(events)`` once per step per request with that step's events (a ``Token``,
and a ``Done`` last), ``sink.fail(exc)`` when the request ends in an error, and ``sink.attach(handle)``
once at submit. ``AsyncSink`` hands events to an asyncio loop (``async for event in sink``); ``SyncSink``
to a blocking consumer (``for event in sink``). A consumer that stops iterating early, or closes the sink,
cancels the request, so its slot frees at the next step.
"""

from __future__ import annotations

import asyncio
import queue
from collections import deque
from typing import Iterator, Protocol

from lokal.types import Done, Event


class Cancellable(Protocol):
    """What a sink is attached to: the request it receives events for (the engine's ``Handle``)."""

    def cancel(self) -> None: ...


class Sink(Protocol):
    def attach(self, handle: Cancellable) -> None: ...

    def push(self, events: list[Event]) -> None: ...

    def fail(self, exc: BaseException) -> None: ...


class _HandleHolder:
    _handle: Cancellable | None = None

    def attach(self, handle: Cancellable) -> None:
        self._handle = handle

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


class AsyncSink(_HandleHolder):
    """Events for ``async for`` on ``loop``; the engine thread never blocks on the consumer."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: asyncio.Queue[list[Event] | BaseException] = asyncio.Queue()

    def push(self, events: list[Event]) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, events)

    def fail(self, exc: BaseException) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, exc)

    def __aiter__(self) -> _AsyncEvents:
        return _AsyncEvents(self)

    async def aclose(self) -> None:
        self._cancel()


class _AsyncEvents:
    """One ``async for`` over an ``AsyncSink``. A class rather than an async generator: an abandoned async
    generator is only closed later by the event loop (if at all), while this cancels the request as soon as
    the consumer lets go of it."""

    def __init__(self, sink: AsyncSink):
        self._sink = sink
        self._pending: deque[Event] = deque()
        self._is_over = False

    def __aiter__(self) -> _AsyncEvents:
        return self

    async def __anext__(self) -> Event:
        while not self._pending:
            if self._is_over:
                raise StopAsyncIteration
            item = await self._sink._queue.get()
            if isinstance(item, BaseException):
                self._is_over = True
                raise item
            self._pending.extend(item)
        event = self._pending.popleft()
        if isinstance(event, Done):
            self._is_over = True
        return event

    async def aclose(self) -> None:
        self._end()

    def __del__(self) -> None:
        self._end()

    def _end(self) -> None:
        if not self._is_over:
            self._is_over = True
            self._sink._cancel()  # a no-op once the request is done


class SyncSink(_HandleHolder):
    """Events for a blocking ``for`` loop in any thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[Event] | BaseException] = queue.SimpleQueue()

    def push(self, events: list[Event]) -> None:
        self._queue.put(events)

    def fail(self, exc: BaseException) -> None:
        self._queue.put(exc)

    def __iter__(self) -> Iterator[Event]:
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                for event in item:
                    yield event
                    if isinstance(event, Done):
                        return
        finally:
            self._cancel()

    def close(self) -> None:
        self._cancel()
