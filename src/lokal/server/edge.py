"""The shared HTTP edge: what every API flavour (Ollama, OpenAI, Foundry, Responses, Anthropic) needs
between its wire types and the runtime. Flavour modules import this, never each other.

- ``runtime_of``: the one runtime behind the app.
- Translation helpers: keep-alive durations, base64 (plain or data: URLs), str-or-list inputs.
- ``respond``: one generation as a stream (NDJSON or SSE, by the flavour's renderer) or one JSON answer.
- ``iterate_in_thread``: a blocking iterator (pull, create) stepped in worker threads.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, AsyncIterator, Callable, Iterator

import anyio
from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict, model_validator
from starlette.concurrency import iterate_in_threadpool

from lokal import types as internal
from lokal.config import parse_duration
from lokal.errors import BadRequest
from lokal.server.streaming import (JSONResponse, Renderer, collect, first_event, render_stream,
                                    streaming_response, until_disconnected)


class WireModel(BaseModel):
    """Base of every request wire type: unknown fields (typos) are a 400, field docstrings feed /docs.
    A field sent as ``null`` means "unset", as in Ollama (langchain, llama-index and Open WebUI send
    unset fields that way), so it takes its default rather than failing a type check."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(value is None for value in data.values()):
            return {key: value for key, value in data.items() if value is not None}
        return data


def runtime_of(request: Request) -> Any:
    return request.app.state.runtime


# ---- translation helpers ----------------------------------------------------------------------------------


def parse_keep_alive(value: float | str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise BadRequest(f"invalid keep_alive: {exc}") from None


def decode_base64(text: str, what: str) -> bytes:
    """Base64 text as bytes; a 400 naming ``what`` when it is not."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None


def text_list(value: Any, field: str, allow_empty: bool = True) -> list[str]:
    """A string or a list of strings (the shapes embeddings, rerank and tokenize accept) as a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        if not value and not allow_empty:
            raise BadRequest(f"{field} must not be empty")
        return list(value)
    raise BadRequest(f"{field} must be a string or a list of strings (token arrays are not supported)")


def parse_think(value: bool | str | None) -> internal.Think:
    """Ollama's ``think``: true/false or an effort level; OpenAI's ``reasoning_effort`` goes through here too."""
    if value is None or isinstance(value, bool):
        return value
    level = value.strip().lower()
    if level in ("low", "medium", "high"):
        return level  # type: ignore[return-value]
    if level in ("true", "false"):
        return level == "true"
    if level in ("none", "minimal"):  # OpenAI's "no reasoning"
        return False
    raise BadRequest(f'think must be true, false, "low", "medium" or "high", got {value!r}')


def parse_tool_choice(value: str | dict[str, Any] | None) -> str | None:
    """``tool_choice`` in any flavour's shape → "auto", "none", "required" or a function's name.

    OpenAI chat: a string or ``{"type": "function", "function": {"name"}}``; Responses: ``{"type":
    "function", "name"}``; Anthropic: ``{"type": "auto" | "any" | "none" | "tool", "name"}``."""
    if value is None:
        return None
    if isinstance(value, str):
        if value in ("auto", "none", "required"):
            return value
        raise BadRequest(f'tool_choice must be "auto", "none", "required" or a function, got {value!r}')
    kind = value.get("type")
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    name = (value.get("function") or {}).get("name") if kind == "function" else None
    name = name or (value.get("name") if kind in ("function", "tool") else None)
    if not isinstance(name, str) or not name:
        raise BadRequest("tool_choice must name a function: {\"type\": \"function\", \"function\": {\"name\": …}}")
    return name


# ---- responding -------------------------------------------------------------------------------------------


async def respond(request: Request, stream: bool, events: AsyncIterator[internal.Event], renderer: Renderer,
                  media_type: str) -> Response:
    """One generation's answer: streamed as the renderer writes it, or collected into ``renderer.final``.
    Errors raised before the first event keep their status (they surface in ``first_event``)."""
    first = await first_event(request, events)
    if stream:
        return streaming_response(render_stream(first, events, renderer), media_type)
    answer, done = await until_disconnected(request, collect(first, events))
    return JSONResponse(renderer.final(done, answer))


async def iterate_in_thread(make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Each step of a blocking iterator in a worker thread. Closing this closes that iterator too, so an
    abandoned pull stops downloading (what it fetched stays for resuming)."""
    source = _deferred(make)
    try:
        async for item in iterate_in_threadpool(source):
            yield item
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(source.close)


def _deferred(make: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    # Calls make() on the first step, in the worker thread; `yield from` forwards close() to it.
    yield from make()


def parse_logprobs(logprobs: bool | None, top_logprobs: int | None, *, top_needs_logprobs: bool = False,
                   most: int = internal.MAX_TOP_LOGPROBS) -> int | None:
    """The runtime's ``logprobs`` (None: none asked; n: alternatives per token) from a flavour's two fields.
    Ollama ignores ``top_logprobs`` without ``logprobs``; OpenAI refuses it (``top_needs_logprobs``)."""
    top = top_logprobs or 0
    if not 0 <= top <= most:
        raise BadRequest(f"top_logprobs must be between 0 and {most}")
    if not logprobs:
        if top and top_needs_logprobs:
            raise BadRequest("top_logprobs needs logprobs: true")
        return None
    return top


def wire_logprobs(logprobs: list[internal.Logprob]) -> list[dict[str, Any]]:
    """Ollama's and OpenAI chat's shape (the same): token, logprob, bytes and the top alternatives."""
    return [{**_wire_logprob(entry), "top_logprobs": [_wire_logprob(top) for top in entry.top_logprobs]}
            for entry in logprobs]


def _wire_logprob(entry: internal.Logprob) -> dict[str, Any]:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.piece)}
