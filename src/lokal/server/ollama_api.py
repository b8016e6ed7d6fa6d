"""The Ollama API: each handler translates its wire type to the runtime's one request type and renders
the runtime's events back. Model management goes to the store (``runtime.store``)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Iterator

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from lokal import __version__
from lokal import types as internal
from lokal.errors import BadRequest, DigestMismatch, LokalError, ModelNotFound
from lokal.model_info import details_fields, listing_details
from lokal.store.blobs import normalize_digest
from lokal.server import ollama_types as wire
from lokal.server.edge import (decode_base64, iterate_in_thread, parse_keep_alive, parse_logprobs, parse_think,
                               respond, runtime_of, text_list, wire_logprobs)
from lokal.server.streaming import (NDJSON, Answer, JSONResponse, close_quietly, ndjson_line, now_rfc3339,
                                    streaming_response, until_disconnected)

log = logging.getLogger("lokal.server")

router = APIRouter()

# What /api/ps reports for a model kept loaded forever (Ollama prints such a date as "Forever").
FOREVER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)


# ---- translation: wire → internal ------------------------------------------------------------------------


def decode_images(images: list[str] | None) -> list[bytes] | None:
    if not images:
        return None
    return [decode_base64(text, f"image {index}") for index, text in enumerate(images)]


def parse_format(value: wire.Format) -> internal.Format:
    if value is None or value == "":
        return None
    return value


def to_message(message: wire.Message) -> internal.Message:
    tool_calls = None
    if message.tool_calls:
        tool_calls = [call.model_dump(exclude_none=True) for call in message.tool_calls]
    return internal.Message(role=message.role, content=message.content, images=decode_images(message.images),
                            tool_calls=tool_calls, tool_name=message.tool_name, thinking=message.thinking)


def to_generate_request(body: wire.GenerateRequest) -> internal.GenerateRequest:
    images = decode_images(body.images)
    # An empty prompt means "load the model", as in Ollama (unless images make it a real request).
    prompt = body.prompt if body.prompt or images else None
    return internal.GenerateRequest(
        model=body.model, prompt=prompt, system=body.system, template=body.template, suffix=body.suffix,
        raw=body.raw, context=body.context, images=images, format=parse_format(body.format),
        options=body.options, keep_alive=parse_keep_alive(body.keep_alive), think=parse_think(body.think),
        logprobs=parse_logprobs(body.logprobs, body.top_logprobs))


def to_chat_request(body: wire.ChatRequest) -> internal.GenerateRequest:
    messages = [to_message(m) for m in body.messages] or None
    return internal.GenerateRequest(
        model=body.model, messages=messages, tools=body.tools or None, format=parse_format(body.format),
        options=body.options, keep_alive=parse_keep_alive(body.keep_alive), think=parse_think(body.think),
        logprobs=parse_logprobs(body.logprobs, body.top_logprobs))


# ---- rendering: internal → wire --------------------------------------------------------------------------


def done_fields(done: internal.Done) -> dict[str, Any]:
    """The last object's fields; zero metrics are left out, as Ollama's omitempty does, except the prompt's
    count: Ollama always computes at least the last prompt token, so clients count on the field (and add it up);
    lokal computes none for a prompt it answered before (its logits are cached), which is 0, not missing."""
    fields: dict[str, Any] = {"done": True, "done_reason": done.reason}
    for name in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                 "eval_count", "eval_duration"):
        value = getattr(done, name)
        if value or name == "prompt_eval_count":
            fields[name] = value
    if done.knowledge:  # lokal: the knowledge chunks the model saw, so users can audit them
        fields["knowledge"] = done.knowledge
    return fields


def error_line(error: LokalError) -> bytes:
    return ndjson_line({"error": error.message})


def add_logprobs(body: dict[str, Any], logprobs: list[internal.Logprob] | None) -> dict[str, Any]:
    """Ollama (>= 0.12) puts each chunk's tokens' logprobs beside its text; omitted when none."""
    if logprobs:
        body["logprobs"] = wire_logprobs(logprobs)
    return body


def ollama_tool_calls(calls: list[dict[str, Any]], first_index: int = 0) -> list[dict[str, Any]]:
    """Calls as Ollama writes them: arguments as an object, each with its position among the message's."""
    return [{"function": {"index": first_index + offset, "name": call["function"]["name"],
                          "arguments": call["function"]["arguments"]}}
            for offset, call in enumerate(calls)]


class GenerateRenderer:
    def __init__(self, model: str):
        self.model = model

    def token(self, token: internal.Token) -> bytes:
        line = {"model": self.model, "created_at": now_rfc3339(), "response": token.text, "done": False}
        if token.thinking:
            line["thinking"] = token.thinking
        return ndjson_line(add_logprobs(line, token.logprobs))

    def final(self, done: internal.Done, answer: Answer) -> dict[str, Any]:
        body = {"model": self.model, "created_at": now_rfc3339(), "response": answer.text}
        if answer.thinking:
            body["thinking"] = answer.thinking
        body.update(done_fields(done))
        if done.context:
            body["context"] = done.context
        return add_logprobs(body, answer.logprobs)

    def done(self, done: internal.Done) -> bytes:
        return ndjson_line(self.final(done, Answer()))

    error = staticmethod(error_line)


class ChatRenderer:
    def __init__(self, model: str):
        self.model = model
        self.num_calls = 0

    def _message(self, content: str, thinking: str, calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = ollama_tool_calls(calls, self.num_calls)
            self.num_calls += len(calls)
        return message

    def token(self, token: internal.Token) -> bytes:
        line = {"model": self.model, "created_at": now_rfc3339(),
                "message": self._message(token.text, token.thinking, token.tool_calls), "done": False}
        return ndjson_line(add_logprobs(line, token.logprobs))

    def final(self, done: internal.Done, answer: Answer) -> dict[str, Any]:
        body = {"model": self.model, "created_at": now_rfc3339(),
                "message": self._message(answer.text, answer.thinking, answer.tool_calls), **done_fields(done)}
        return add_logprobs(body, answer.logprobs)

    def done(self, done: internal.Done) -> bytes:
        return ndjson_line(self.final(done, Answer()))

    error = staticmethod(error_line)


# ---- service --------------------------------------------------------------------------------------------


@router.get("/", response_class=PlainTextResponse, tags=["service"])
@router.head("/", response_class=PlainTextResponse, include_in_schema=False)
async def root() -> str:
    return "lokal is running"


@router.get("/api/version", response_model=wire.VersionResponse, tags=["service"])
@router.head("/api/version", include_in_schema=False)  # Ollama answers HEAD here and on /api/tags: clients probe
async def version() -> Response:
    return JSONResponse({"version": __version__})


@router.get("/api/health", response_model=wire.StatusResponse, tags=["service"])
@router.head("/api/health", include_in_schema=False)
async def health() -> Response:
    """Liveness for container HEALTHCHECKs: answers while the event loop is serving."""
    return JSONResponse({"status": "ok"})


# ---- generation -----------------------------------------------------------------------------------------


@router.post("/api/generate", response_model=wire.GenerateResponse, tags=["ollama"])
async def generate(body: wire.GenerateRequest, request: Request) -> Response:
    """Complete a prompt. Streams NDJSON unless ``stream`` is false."""
    events = runtime_of(request).generate(to_generate_request(body))
    return await respond(request, body.stream, events, GenerateRenderer(body.model), NDJSON)


@router.post("/api/chat", response_model=wire.ChatResponse, tags=["ollama"])
async def chat(body: wire.ChatRequest, request: Request) -> Response:
    """Answer a conversation. Streams NDJSON unless ``stream`` is false."""
    events = runtime_of(request).generate(to_chat_request(body))
    return await respond(request, body.stream, events, ChatRenderer(body.model), NDJSON)


@router.post("/api/embed", response_model=wire.EmbedResponse, tags=["ollama"])
async def embed(body: wire.EmbedRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    inputs = text_list(body.input, "input")
    keep_alive = parse_keep_alive(body.keep_alive)
    if not inputs:  # Ollama loads the model and answers with no embeddings
        await until_disconnected(request, runtime.load(body.model, keep_alive))
        return JSONResponse({"model": body.model, "embeddings": [], "total_duration": 0, "load_duration": 0,
                             "prompt_eval_count": 0})
    embed_request = internal.EmbedRequest(model=body.model, input=inputs, truncate=body.truncate,
                                          dimensions=body.dimensions, options=body.options, keep_alive=keep_alive)
    result = await until_disconnected(request, runtime.embed(embed_request))
    return JSONResponse({"model": body.model, "embeddings": result.embeddings,
                         "total_duration": result.total_duration, "load_duration": result.load_duration,
                         "prompt_eval_count": result.prompt_eval_count})


@router.post("/api/embeddings", response_model=wire.EmbeddingsResponse, tags=["ollama"])
async def embeddings(body: wire.EmbeddingsRequest, request: Request) -> Response:
    """The legacy single-text endpoint."""
    runtime = runtime_of(request)
    keep_alive = parse_keep_alive(body.keep_alive)
    if not body.prompt:
        await until_disconnected(request, runtime.load(body.model, keep_alive))
        return JSONResponse({"embedding": []})
    embed_request = internal.EmbedRequest(model=body.model, input=[body.prompt], options=body.options,
                                          keep_alive=keep_alive)
    result = await until_disconnected(request, runtime.embed(embed_request))
    return JSONResponse({"embedding": result.embeddings[0]})


# ---- models ---------------------------------------------------------------------------------------------


@router.get("/api/ps", response_model=wire.ProcessResponse, tags=["ollama"])
async def running_models(request: Request) -> Response:
    models = []
    for model in runtime_of(request).running():
        models.append({"name": model.name, "model": model.model, "size": model.size, "digest": model.digest,
                       "details": details_fields(model.details),
                       "expires_at": (model.expires_at or FOREVER).isoformat(),
                       "size_vram": model.size_vram, "context_length": model.context_length,
                       "format": model.format, "device": model.device, "device_reason": model.device_reason,
                       "concurrency": model.concurrency, "num_parallel": model.num_parallel})
    return JSONResponse({"models": models})


@router.get("/api/tags", response_model=wire.ListResponse, tags=["ollama"])
@router.head("/api/tags", include_in_schema=False)
async def list_models(request: Request) -> Response:
    return JSONResponse({"models": await anyio.to_thread.run_sync(_list_models, runtime_of(request).store)})


def _list_models(store: Any) -> list[dict[str, Any]]:
    models = []
    for entry in store.list().models:
        display = entry.name.display
        models.append({"name": display, "model": display, "modified_at": entry.modified_at.isoformat(),
                       "size": entry.size, "digest": entry.digest.removeprefix("sha256:"),
                       "details": listing_details(store, entry)})
    return models


@router.post("/api/show", response_model=wire.ShowResponse, tags=["ollama"])
async def show(body: wire.ShowRequest, request: Request) -> Response:
    from lokal.model_info import describe

    description = await anyio.to_thread.run_sync(describe, runtime_of(request).store, body.model)
    return JSONResponse(description.to_dict())


@router.delete("/api/delete", tags=["ollama"])
async def delete(body: wire.DeleteRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    store = runtime.store
    if not await anyio.to_thread.run_sync(store.exists, body.model):
        raise ModelNotFound(body.model, f'model "{body.model}" not found')
    await runtime.unload(body.model)
    await anyio.to_thread.run_sync(store.remove, body.model)
    return Response(status_code=200)


@router.post("/api/copy", tags=["ollama"])
async def copy(body: wire.CopyRequest, request: Request) -> Response:
    await anyio.to_thread.run_sync(runtime_of(request).store.copy, body.source, body.destination)
    return Response(status_code=200)


def progress_fields(progress: Any) -> dict[str, Any]:
    fields = {"status": progress.status}
    for name in ("digest", "total", "completed"):
        value = getattr(progress, name, None)
        if value is not None:
            fields[name] = value
    return fields


async def respond_progress(request: Request, stream: bool, make: Callable[[], Iterator[Any]]) -> Response:
    """Run a synchronous progress iterator (pull, create) in worker threads and forward its events.
    Errors before the first event get a status; later ones arrive as an ``{"error"}`` line."""
    events = iterate_in_thread(make)
    try:
        first = await until_disconnected(request, anext(events))
    except StopAsyncIteration:
        raise LokalError("the operation ended without reporting progress") from None
    except BaseException:
        await close_quietly(events)
        raise
    if stream:
        async def lines() -> AsyncIterator[bytes]:
            try:
                yield ndjson_line(progress_fields(first))
                async for progress in events:
                    yield ndjson_line(progress_fields(progress))
            except LokalError as exc:
                yield error_line(exc)
            except Exception:
                log.exception("operation failed")
                yield error_line(LokalError("internal error; see the server log"))
            finally:
                await close_quietly(events)

        return streaming_response(lines(), NDJSON)

    async def last_event() -> Any:
        last = first
        async for progress in events:
            last = progress
        return last

    try:
        return JSONResponse(progress_fields(await until_disconnected(request, last_event())))
    finally:
        await close_quietly(events)


@router.post("/api/pull", response_model=wire.ProgressResponse, tags=["ollama"])
async def pull(body: wire.PullRequest, request: Request) -> Response:
    """Download a model. Streams ``{status, digest, total, completed}`` objects, then ``success``."""
    from lokal.store.sources import pull as pull_model

    runtime = runtime_of(request)
    # A remote caller may not import the server's files or reach its private network (SSRF).
    return await respond_progress(request, body.stream, lambda: pull_model(
        runtime.store, body.model, runtime.settings, insecure=body.insecure, allow_local_files=False,
        allow_private=runtime.settings.allow_private_pulls))


@router.post("/api/create", response_model=wire.ProgressResponse, tags=["ollama"])
async def create(body: wire.CreateRequest, request: Request) -> Response:
    """Make a new model from an existing one (or uploaded GGUF blobs) with new defaults."""
    from lokal.create import CreateSpec, create_model

    runtime = runtime_of(request)
    spec = CreateSpec(
        name=body.model, source=body.from_, files=body.files, adapters=body.adapters, template=body.template,
        system=body.system, license=body.license, parameters=body.parameters,
        messages=[{"role": m.role, "content": m.content} for m in body.messages or []], quantize=body.quantize,
        knowledge=body.knowledge, draft=body.draft)
    return await respond_progress(request, body.stream, lambda: create_model(runtime.store, spec))


# ---- blobs ----------------------------------------------------------------------------------------------

# Uploads are hashed and written in blocks of this size, off the event loop.
BLOB_WRITE_BYTES = 4 * 1024 * 1024


@router.head("/api/blobs/{digest}", tags=["ollama"])
async def blob_exists(digest: str, request: Request) -> Response:
    blobs = runtime_of(request).store.blobs
    return Response(status_code=200 if blobs.exists(normalize_digest(digest)) else 404)


@router.post("/api/blobs/{digest}", status_code=201, tags=["ollama"])
async def upload_blob(digest: str, request: Request) -> Response:
    """Store an uploaded file under its sha256 digest (used by create with ``files``)."""
    blobs = runtime_of(request).store.blobs
    expected = normalize_digest(digest)
    if blobs.exists(expected):
        return Response(status_code=200)
    # A fresh temp file (not a resumable partial): a client re-sends an upload from its start.
    with blobs.writer() as writer:
        pending = bytearray()
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= BLOB_WRITE_BYTES:
                await anyio.to_thread.run_sync(writer.write, bytes(pending))
                pending.clear()
        if pending:
            await anyio.to_thread.run_sync(writer.write, bytes(pending))
        try:
            await anyio.to_thread.run_sync(writer.commit, expected)
        except DigestMismatch as exc:  # the client's mistake, not a failed download: a 400
            raise BadRequest(f"digest mismatch: the upload's sha256 is {exc.actual}, not {digest}") from None
    return Response(status_code=201)


