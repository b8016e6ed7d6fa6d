"""The OpenAI-compatible API: a translation in front of the same runtime path as the Ollama handlers
(as Ollama's middleware/openai.go is). Requests become ``GenerateRequest``/``EmbedRequest``; the event
stream becomes SSE chunks or one completion object; errors become OpenAI error objects (app.py)."""

from __future__ import annotations

import base64
import codecs
import json
import secrets
import struct
import time
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response

from lokal import types as internal
from lokal.errors import BadRequest, LokalError
from lokal.server import openai_types as wire
from lokal.server.edge import (decode_base64, parse_keep_alive, parse_logprobs, parse_think, parse_tool_choice,
                               respond, runtime_of, text_list, wire_logprobs)
from lokal.server.streaming import SSE, SSE_DONE, Answer, JSONResponse, sse_event, until_disconnected

router = APIRouter(prefix="/v1", tags=["openai"])

SYSTEM_FINGERPRINT = "fp_lokal"


# ---- translation: wire → internal ------------------------------------------------------------------------


def sampling_options(body: wire.SamplingFields, max_tokens: int | None) -> dict[str, Any]:
    """OpenAI's sampling fields as Ollama options, over the ``options`` extension. Unset fields stay unset,
    so the model's own PARAMETERs apply."""
    if body.n not in (None, 1):
        raise BadRequest("n > 1 is not supported: send one request per choice")
    if body.logit_bias:
        raise BadRequest("logit_bias is not supported")
    options = dict(body.options or {})
    mapped = {"temperature": body.temperature, "top_p": body.top_p, "num_predict": max_tokens,
              "seed": body.seed, "frequency_penalty": body.frequency_penalty,
              "presence_penalty": body.presence_penalty, "ignore_eos": body.ignore_eos}
    options.update({name: value for name, value in mapped.items() if value is not None})
    if body.stop is not None:
        options["stop"] = [body.stop] if isinstance(body.stop, str) else list(body.stop)
    return options


def response_format(value: dict[str, Any] | None) -> internal.Format:
    if value is None:
        return None
    kind = value.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (value.get("json_schema") or {}).get("schema")
        if schema is None:
            return "json"
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be a JSON object")
        return schema
    raise BadRequest(f"response_format type {kind!r} is not supported (use text, json_object or json_schema)")


def content_text_and_images(content: str | list[dict[str, Any]] | None) -> tuple[str, list[bytes] | None]:
    if content is None or isinstance(content, str):
        return content or "", None
    texts: list[str] = []
    images: list[bytes] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            images.append(_data_url_bytes(url))
        else:
            raise BadRequest(f"content part type {kind!r} is not supported (use text or image_url)")
    return "\n".join(texts), images or None


def _data_url_bytes(url: str) -> bytes:
    if not url.startswith("data:") or ";base64," not in url:
        raise BadRequest("image_url must be a data: URL with base64 content; lokal does not fetch remote images")
    return decode_base64(url.split(";base64,", 1)[1], "image_url data")


def to_messages(messages: list[wire.ChatMessage]) -> list[internal.Message]:
    converted: list[internal.Message] = []
    tool_names: dict[str, str] = {}  # call id → function name, so tool results can name their tool
    for message in messages:
        if message.role == "function" or message.function_call:
            raise BadRequest("function calling is deprecated and not supported; use tools")
        if message.audio:
            raise BadRequest("audio messages are not supported")
        text, images = content_text_and_images(message.content)
        tool_calls = None
        if message.tool_calls:
            tool_calls = []
            for call in message.tool_calls:
                function = call.get("function") or {}
                arguments = function.get("arguments") or "{}"
                try:
                    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
                except json.JSONDecodeError:
                    raise BadRequest(f"tool call arguments are not valid JSON: {arguments!r}") from None
                tool_calls.append({"function": {"name": function.get("name", ""), "arguments": parsed}})
                if call.get("id"):
                    tool_names[call["id"]] = function.get("name", "")
        role = "system" if message.role == "developer" else message.role
        tool_name = tool_names.get(message.tool_call_id or "") if role == "tool" else None
        converted.append(internal.Message(role=role, content=text, images=images, tool_calls=tool_calls,
                                          tool_name=tool_name))
    return converted


def to_chat_request(body: wire.ChatCompletionRequest) -> internal.GenerateRequest:
    if body.audio or (body.modalities and set(body.modalities) - {"text"}):
        raise BadRequest("only text output is supported")
    if body.functions or body.function_call:
        raise BadRequest("function calling is deprecated and not supported; use tools")
    if body.web_search_options is not None or body.moderation is not None:
        raise BadRequest("web search and moderation are not available on a local server")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return internal.GenerateRequest(
        model=body.model, messages=to_messages(body.messages), tools=body.tools or None,
        tool_choice=parse_tool_choice(body.tool_choice), format=response_format(body.response_format),
        options=sampling_options(body, max_tokens), keep_alive=parse_keep_alive(body.keep_alive),
        think=parse_think(body.reasoning_effort),
        logprobs=parse_logprobs(body.logprobs, body.top_logprobs, top_needs_logprobs=True))


def single_prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise BadRequest("a list of prompts is not supported: send one request per prompt")
    raise BadRequest("prompt must be a string (token arrays are not supported)")


def to_completion_request(body: wire.CompletionRequest) -> internal.GenerateRequest:
    if body.best_of not in (None, 1):
        raise BadRequest("best_of > 1 is not supported")
    # Completions continue the text as written (raw); fill-in-the-middle needs the model's template.
    return internal.GenerateRequest(
        model=body.model, prompt=single_prompt(body.prompt), suffix=body.suffix, raw=body.suffix is None,
        options=sampling_options(body, body.max_tokens), keep_alive=parse_keep_alive(body.keep_alive),
        logprobs=parse_logprobs(body.logprobs is not None, body.logprobs, most=5))


# ---- rendering: internal → wire --------------------------------------------------------------------------


def usage(done: internal.Done) -> dict[str, int]:
    prompt_tokens = done.prompt_count  # the whole prompt, as OpenAI counts it (a reused prefix included)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": done.eval_count,
            "total_tokens": prompt_tokens + done.eval_count}


def finish_reason(done: internal.Done, num_calls: int = 0) -> str:
    if num_calls:
        return "tool_calls"
    return "length" if done.reason == "length" else "stop"


def openai_tool_calls(calls: list[dict[str, Any]], first_index: int = 0) -> list[dict[str, Any]]:
    """Calls as OpenAI writes them: an id per call and the arguments as a JSON string."""
    return [{"index": first_index + offset, "id": "call_" + secrets.token_hex(12), "type": "function",
             "function": {"name": call["function"]["name"],
                          "arguments": json.dumps(call["function"]["arguments"], ensure_ascii=False)}}
            for offset, call in enumerate(calls)]


class CompletionLogprobs:
    """Legacy completions' logprobs: parallel lists, the alternatives as {token: logprob}, and each token's
    character offset in the returned text (the echoed prompt included; its own tokens are not reported)."""

    def __init__(self, start: int):
        self.num_chars = start
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def render(self, logprobs: list[internal.Logprob]) -> dict[str, Any]:
        offsets = []
        for entry in logprobs:
            offsets.append(self.num_chars)
            self.num_chars += len(self._utf8.decode(entry.piece))
        return {"tokens": [entry.token for entry in logprobs],
                "token_logprobs": [entry.logprob for entry in logprobs],
                "top_logprobs": [{top.token: top.logprob for top in entry.top_logprobs} for entry in logprobs],
                "text_offset": offsets}


class CompletionRenderer:
    """Chat completions (``chat=True``) and legacy text completions share everything but the shapes."""

    def __init__(self, model: str, chat: bool, include_usage: bool, prefix: str = "",
                 parallel_tool_calls: bool = True, logprobs: bool = False):
        self.model = model
        self.is_chat = chat
        self.include_usage = include_usage
        self.prefix = prefix  # echo: the prompt in front of the answer
        self.completion_logprobs = CompletionLogprobs(len(prefix)) if logprobs and not chat else None
        self.wants_logprobs = logprobs
        self.parallel_tool_calls = parallel_tool_calls
        self.num_calls = 0
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _envelope(self, choices: list[dict[str, Any]], object_name: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices}

    def _calls(self, calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """The calls to report, numbered after those already sent; one in all unless parallel calls are on."""
        calls = list(calls or ())
        if not self.parallel_tool_calls:
            calls = calls[: max(0, 1 - self.num_calls)]
        converted = openai_tool_calls(calls, self.num_calls)
        self.num_calls += len(converted)
        return converted

    def _logprobs(self, logprobs: list[internal.Logprob] | None) -> dict[str, Any] | None:
        """A choice's ``logprobs``: null unless asked, else those of the tokens behind this text (for a model
        that thinks, the reasoning's tokens are among them: the split into reasoning and content is by text)."""
        if not self.wants_logprobs or (logprobs is None and self.completion_logprobs is None):
            return None
        if self.completion_logprobs is not None:
            return self.completion_logprobs.render(logprobs or [])
        return {"content": wire_logprobs(logprobs or []), "refusal": None}

    def _chunk(self, text: str, finish: str | None, thinking: str = "",
               calls: list[dict[str, Any]] | None = None, logprobs: list[internal.Logprob] | None = None) -> bytes:
        chunk_object = "chat.completion.chunk" if self.is_chat else "text_completion"
        if self.is_chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                delta["reasoning_content"] = thinking
            if calls:
                delta["tool_calls"] = calls
            choice = {"index": 0, "delta": delta, "logprobs": self._logprobs(logprobs), "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": self._logprobs(logprobs) if logprobs else None,
                      "finish_reason": finish}
        return sse_event(self._envelope([choice], chunk_object))

    def token(self, token: internal.Token) -> bytes:
        text = token.text
        if self.prefix:
            text, self.prefix = self.prefix + text, ""
        calls = self._calls(token.tool_calls) if token.tool_calls else None
        if not text and not token.thinking and not calls:
            return b""
        return self._chunk(text, None, token.thinking, calls, token.logprobs)

    def done(self, done: internal.Done) -> bytes:
        out = self._chunk(self.prefix, finish_reason(done, self.num_calls))
        if self.include_usage:
            chunk_object = "chat.completion.chunk" if self.is_chat else "text_completion"
            out += sse_event({**self._envelope([], chunk_object), "usage": usage(done)})
        return out + SSE_DONE

    def error(self, error: LokalError) -> bytes:
        return sse_event(wire.error_body(error.status, error.message))

    def final(self, done: internal.Done, answer: Answer) -> dict[str, Any]:
        text = self.prefix + answer.text
        if self.is_chat:
            calls = self._calls(answer.tool_calls)
            message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
            if answer.thinking:
                message["reasoning_content"] = answer.thinking
            if calls:
                message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in calls]
            choice = {"index": 0, "message": message, "logprobs": self._logprobs(answer.logprobs),
                      "finish_reason": finish_reason(done, len(calls))}
        else:
            choice = {"index": 0, "text": text, "logprobs": self._logprobs(answer.logprobs),
                      "finish_reason": finish_reason(done)}
        return {**self._envelope([choice], self.object), "usage": usage(done)}


# ---- routes ---------------------------------------------------------------------------------------------


@router.post("/chat/completions", response_model=wire.ChatCompletion)
async def chat_completions(body: wire.ChatCompletionRequest, request: Request) -> Response:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    renderer = CompletionRenderer(body.model, chat=True, include_usage=include_usage,
                                  parallel_tool_calls=body.parallel_tool_calls is not False,
                                  logprobs=bool(body.logprobs))
    events = runtime_of(request).generate(to_chat_request(body))
    return await respond(request, bool(body.stream), events, renderer, SSE)


@router.post("/chat/completions/input_tokens", response_model=wire.InputTokens)
async def chat_input_tokens(body: wire.ChatCompletionRequest, request: Request) -> Response:
    """How many tokens this chat's prompt is (messages, tools and the model's template), without generating."""
    count = await until_disconnected(request, runtime_of(request).count_tokens(to_chat_request(body)))
    return JSONResponse({"object": "response.input_tokens", "input_tokens": count})


@router.post("/completions", response_model=wire.Completion)
async def completions(body: wire.CompletionRequest, request: Request) -> Response:
    generate_request = to_completion_request(body)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    prefix = generate_request.prompt if body.echo else ""
    renderer = CompletionRenderer(body.model, chat=False, include_usage=include_usage, prefix=prefix or "",
                                  logprobs=body.logprobs is not None)
    events = runtime_of(request).generate(generate_request)
    return await respond(request, bool(body.stream), events, renderer, SSE)


@router.post("/embeddings", response_model=wire.EmbeddingList)
async def embeddings(body: wire.EmbeddingRequest, request: Request) -> Response:
    inputs = text_list(body.input, "input", allow_empty=False)
    embed_request = internal.EmbedRequest(model=body.model, input=inputs, dimensions=body.dimensions,
                                          options=body.options, keep_alive=parse_keep_alive(body.keep_alive))
    result = await until_disconnected(request, runtime_of(request).embed(embed_request))
    data = []
    for index, vector in enumerate(result.embeddings):
        encoded: Any = vector
        if body.encoding_format == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    usage = {"prompt_tokens": result.prompt_eval_count, "total_tokens": result.prompt_eval_count}
    return JSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})


def model_object(entry: Any) -> dict[str, Any]:
    created = int(entry.modified_at.timestamp()) if entry.modified_at else 0
    return {"id": entry.name.display, "object": "model", "created": created, "owned_by": entry.name.namespace}


@router.get("/models", response_model=wire.ModelList)
async def list_models(request: Request) -> Response:
    entries = (await anyio.to_thread.run_sync(runtime_of(request).store.list)).models
    return JSONResponse({"object": "list", "data": [model_object(entry) for entry in entries]})


@router.get("/models/{model:path}", response_model=wire.Model)
async def get_model(model: str, request: Request) -> Response:
    from lokal.store.names import ModelName

    entry = await anyio.to_thread.run_sync(runtime_of(request).store.get, ModelName.parse(model))
    return JSONResponse(model_object(entry))
