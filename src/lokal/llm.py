"""The in-process Python API: ``LLM("smollm2").generate(...)``, ``.chat(...)``, ``.embed(...)``, sync and async.

An ``LLM`` owns a ``Runtime`` on a private event-loop thread, so the same object serves plain scripts
(sync methods) and asyncio code (``a``-prefixed methods). Options and stats are the server's: Ollama's
option names, ``Done`` with nanosecond durations.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Union

from lokal.config import Settings, parse_duration
from lokal.errors import BadRequest
from lokal.runtime import Runtime
from lokal.store.names import ModelName
from lokal.types import Done, EmbedRequest, Event, Format, GenerateRequest, Logprob, Message, Think, Token

MessageLike = Union[Message, dict[str, Any]]


@dataclass
class Chunk:
    """A piece of a streamed answer; the last chunk carries ``done`` with the stats."""

    text: str
    done: Done | None = None
    thinking: str = ""  # reasoning, for thinking models asked to think
    tool_calls: list[dict[str, Any]] | None = None  # calls completed in this chunk
    logprobs: list[Logprob] | None = None  # its tokens' log-probabilities, when asked for


@dataclass
class Response:
    text: str
    done: Done
    thinking: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[Logprob] | None = None  # every generated token's, when asked for


_END = object()


class LLM:
    def __init__(self, model: str = "smollm2", *, settings: Settings | None = None, pull: bool = True,
                 keep_alive: float | str | None = None, **options: Any):
        """``options`` are defaults for every call (Ollama names: temperature, num_ctx, num_predict, …)."""
        self.settings = settings or Settings()
        self.model = ModelName.parse(model).display
        self.options = options
        self.keep_alive = None if keep_alive is None else parse_duration(keep_alive)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lokal-llm", daemon=True)
        self._thread.start()
        from lokal.engine import set_llama_logging

        set_llama_logging(bool(self.settings.debug))  # llama.cpp's load chatter only when debugging, as in the CLI
        self.runtime = Runtime(self.settings)
        if pull and not self.runtime.store.exists(model):
            from lokal.store.sources import pull as pull_model

            for _ in pull_model(self.runtime.store, model, self.settings):
                pass

    # ---- sync -------------------------------------------------------------------------------------

    def generate(self, prompt: str, *, stream: bool = False, system: str | None = None,
                 template: str | None = None, suffix: str | None = None, raw: bool = False,
                 format: Format = None, options: dict[str, Any] | None = None, images: list[bytes] | None = None,
                 context: list[int] | None = None, keep_alive: float | str | None = None,
                 logprobs: int | None = None) -> Response | Iterator[Chunk]:
        """``logprobs`` n (0-20): each token's log-probability and its n likeliest alternatives."""
        request = GenerateRequest(model=self.model, prompt=prompt, system=system, template=template, suffix=suffix,
                                  raw=raw, format=format, options=self._options(options), images=images,
                                  context=context, keep_alive=self._keep_alive(keep_alive), logprobs=logprobs)
        chunks = self._stream_sync(request)
        return chunks if stream else _collect(chunks)

    def chat(self, messages: Iterable[MessageLike], *, stream: bool = False, format: Format = None,
             options: dict[str, Any] | None = None, tools: list[dict[str, Any]] | None = None,
             keep_alive: float | str | None = None, think: Think = None,
             tool_choice: str | None = None, logprobs: int | None = None) -> Response | Iterator[Chunk]:
        request = self._chat_request(messages, format, options, tools, keep_alive)
        request.think, request.tool_choice, request.logprobs = think, tool_choice, logprobs
        chunks = self._stream_sync(request)
        return chunks if stream else _collect(chunks)

    def embed(self, texts: str | list[str], *, truncate: bool = True, dimensions: int | None = None
              ) -> list[list[float]]:
        return self._call(self.aembed(texts, truncate=truncate, dimensions=dimensions, _on_own_loop=True))

    def info(self) -> Any:
        from lokal.model_info import describe

        return describe(self.runtime.store, self.model)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.runtime.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- async ------------------------------------------------------------------------------------

    async def agenerate(self, prompt: str, *, stream: bool = False, **kwargs: Any) -> Response | AsyncIterator[Chunk]:
        options = kwargs.pop("options", None)
        keep_alive = kwargs.pop("keep_alive", None)
        request = GenerateRequest(model=self.model, prompt=prompt, options=self._options(options),
                                  keep_alive=self._keep_alive(keep_alive), **kwargs)
        chunks = self._stream_async(request)
        return chunks if stream else await _acollect(chunks)

    async def achat(self, messages: Iterable[MessageLike], *, stream: bool = False, format: Format = None,
                    options: dict[str, Any] | None = None, tools: list[dict[str, Any]] | None = None,
                    keep_alive: float | str | None = None) -> Response | AsyncIterator[Chunk]:
        request = self._chat_request(messages, format, options, tools, keep_alive)
        chunks = self._stream_async(request)
        return chunks if stream else await _acollect(chunks)

    async def aembed(self, texts: str | list[str], *, truncate: bool = True, dimensions: int | None = None,
                     _on_own_loop: bool = False) -> list[list[float]]:
        request = EmbedRequest(model=self.model, input=[texts] if isinstance(texts, str) else list(texts),
                               truncate=truncate, dimensions=dimensions, options=self._options(None),
                               keep_alive=self.keep_alive)
        if _on_own_loop:
            return (await self.runtime.embed(request)).embeddings
        future = asyncio.run_coroutine_threadsafe(self.runtime.embed(request), self._loop)
        return (await asyncio.wrap_future(future)).embeddings

    # ---- plumbing ---------------------------------------------------------------------------------

    def _options(self, options: dict[str, Any] | None) -> dict[str, Any] | None:
        merged = {**self.options, **(options or {})}
        return merged or None

    def _keep_alive(self, keep_alive: float | str | None) -> float | None:
        return self.keep_alive if keep_alive is None else parse_duration(keep_alive)

    def _chat_request(self, messages: Iterable[MessageLike], format: Format, options: dict[str, Any] | None,
                      tools: list[dict[str, Any]] | None, keep_alive: float | str | None) -> GenerateRequest:
        return GenerateRequest(model=self.model, messages=[_message(m) for m in messages], format=format,
                               options=self._options(options), tools=tools, keep_alive=self._keep_alive(keep_alive))

    def _call(self, coroutine: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()  # type: ignore[arg-type]

    def _pump(self, request: GenerateRequest, put: Callable[[object], None]) -> asyncio.Future[Any]:
        """Run the request on the LLM's loop, handing each event to ``put`` (thread-safe); cancel the
        returned future to abort the generation."""

        async def run() -> None:
            try:
                async for event in self.runtime.generate(request):
                    put(event)
            except asyncio.CancelledError:
                raise  # the consumer went away; nobody is left to tell
            except Exception as exc:  # delivered to the consumer, who re-raises it
                put(exc)
            else:
                put(_END)

        return asyncio.run_coroutine_threadsafe(run(), self._loop)

    def _stream_sync(self, request: GenerateRequest) -> Iterator[Chunk]:
        events: queue.SimpleQueue[object] = queue.SimpleQueue()
        task = self._pump(request, events.put)
        try:
            while True:
                chunk = _to_chunk(events.get())
                if chunk is None:
                    return
                yield chunk
        finally:
            task.cancel()

    async def _stream_async(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[object] = asyncio.Queue()
        task = self._pump(request, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        try:
            while True:
                chunk = _to_chunk(await events.get())
                if chunk is None:
                    return
                yield chunk
        finally:
            task.cancel()


def _to_chunk(event: object) -> Chunk | None:
    if event is _END:
        return None
    if isinstance(event, BaseException):
        raise event
    if isinstance(event, Token):
        return Chunk(text=event.text, thinking=event.thinking, tool_calls=event.tool_calls, logprobs=event.logprobs)
    assert isinstance(event, Done)
    return Chunk(text="", done=event)


def _collect(chunks: Iterator[Chunk]) -> Response:
    parts, thinking, calls, done = [], [], [], None
    logprobs: list[Logprob] | None = None
    for chunk in chunks:
        parts.append(chunk.text)
        thinking.append(chunk.thinking)
        calls += chunk.tool_calls or []
        if chunk.logprobs is not None:
            logprobs = (logprobs or []) + chunk.logprobs
        done = chunk.done or done
    assert done is not None, "a generation always ends with Done"
    return Response(text="".join(parts), done=done, thinking="".join(thinking), tool_calls=calls or None,
                    logprobs=logprobs)


async def _acollect(chunks: AsyncIterator[Chunk]) -> Response:
    parts, done = [], None
    async for chunk in chunks:
        parts.append(chunk.text)
        done = chunk.done or done
    assert done is not None, "a generation always ends with Done"
    return Response(text="".join(parts), done=done)


def _message(message: MessageLike) -> Message:
    if isinstance(message, Message):
        return message
    if not isinstance(message, dict) or "role" not in message:
        raise BadRequest("each message must be a Message or a dict with 'role' and 'content'")
    return Message(role=message["role"], content=message.get("content") or "", images=message.get("images"),
                   tool_calls=message.get("tool_calls"), tool_name=message.get("tool_name"))


__all__ = ["LLM", "Chunk", "Response", "Event", "Logprob"]
