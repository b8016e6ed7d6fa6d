"""The edge between the runtime's event stream (Token … Done) and HTTP.

Each API flavour supplies a renderer (how a Token, the Done and an error look on its wire); this module
turns a stream into NDJSON lines or SSE events, or collects it into one answer. Whatever way a response
ends (finished, error, client gone), the runtime's iterator is closed, which cancels the generation and
frees its slot.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Protocol, TypeVar

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import StreamingResponse
from starlette.types import Send

from lokal.errors import Cancelled, LokalError
from lokal.server.access import note_event
from lokal.types import Done, Event, Logprob, Token

log = logging.getLogger("lokal.server")

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
SSE_DONE = b"data: [DONE]\n\n"

T = TypeVar("T")


class JSONResponse(StarletteJSONResponse):
    """JSON encoded with orjson (datetimes as RFC 3339)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def ndjson_line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


def sse_event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class Renderer(Protocol):
    """How one API flavour writes the events of one response."""

    def token(self, token: Token) -> bytes: ...

    def done(self, done: Done) -> bytes: ...

    def error(self, error: LokalError) -> bytes: ...

    def final(self, done: Done, answer: Answer) -> dict[str, Any]:
        """The whole answer as one JSON object, for non-streaming requests."""
        ...


@dataclass
class Answer:
    """A whole generated answer, split as the runtime split its tokens."""

    text: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[Logprob] | None = None  # set when the request asked for them

    def add(self, token: Token) -> None:
        self.text += token.text
        self.thinking += token.thinking
        self.tool_calls.extend(token.tool_calls or ())
        if token.logprobs is not None:
            self.logprobs = (self.logprobs or []) + token.logprobs


async def close_quietly(events: AsyncIterator[Any]) -> None:
    """Close the runtime's iterator even while this task is being cancelled (client gone)."""
    aclose = getattr(events, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await aclose()
        except Exception:  # closing must not mask the reason the response ended
            log.exception("error while closing a generation")


async def first_event(request: Request, events: AsyncIterator[Event]) -> Event:
    """The stream's first event. The runtime raises its typed errors here, before any byte is sent,
    so the handler can still answer with the right status."""
    try:
        event = await until_disconnected(request, anext(events))
        note_event(event)
        return event
    except StopAsyncIteration:
        raise LokalError("the generation ended without a result") from None
    except BaseException:
        await close_quietly(events)
        raise


async def render_stream(first: Event, events: AsyncIterator[Event], renderer: Renderer) -> AsyncIterator[bytes]:
    """Bytes of a streamed response. An error after the first byte can only be told in-band."""
    try:
        event = first
        while not isinstance(event, Done):
            chunk = renderer.token(event)
            if chunk:  # a renderer may have nothing to say for a token (e.g. text held back)
                yield chunk
            event = await anext(events)
            note_event(event)
        yield renderer.done(event)
    except StopAsyncIteration:
        yield renderer.error(LokalError("the generation ended without a result"))
    except LokalError as exc:
        yield renderer.error(exc)
    except Exception:
        log.exception("generation failed")
        yield renderer.error(LokalError("internal error while generating; see the server log"))
    finally:
        await close_quietly(events)


async def collect(first: Event, events: AsyncIterator[Event]) -> tuple[Answer, Done]:
    """The whole answer and the final Done, for non-streaming responses."""
    answer = Answer()
    try:
        event = first
        while not isinstance(event, Done):
            answer.add(event)
            event = await anext(events)
            note_event(event)
        return answer, event
    except StopAsyncIteration:
        raise LokalError("the generation ended without a result") from None
    finally:
        await close_quietly(events)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client hangs up first; then cancel it and raise Cancelled (499).

    A non-streaming request otherwise goes on generating for nobody after its client left."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    if task.cancelled() and watcher.done() and not watcher.cancelled():
        raise Cancelled("client closed the connection")
    return task.result()


async def _wait_for_disconnect(request: Request) -> None:
    # FastAPI has read the body already; the next ASGI message is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator, so the generation behind it is
    cancelled even when sending fails (ASGI servers that report a disconnect as an OSError)."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


def streaming_response(body: AsyncIterator[bytes], media_type: str) -> EventStreamResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return EventStreamResponse(body, media_type=media_type, headers=headers)
