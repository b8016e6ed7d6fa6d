"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) over the same runtime path as the
other flavours: content blocks become ``Message``s (tool_use → tool calls, tool_result → tool turns),
the event stream becomes Anthropic's SSE events or one message object; errors are Anthropic's error
objects (app.py). The client's ``x-api-key`` / ``Authorization`` headers are accepted as any other."""

from __future__ import annotations

import json
import secrets
from typing import Any, Sequence

from fastapi import APIRouter, Request, Response

from lokal import types as internal
from lokal.errors import BadRequest, LokalError
from lokal.server import anthropic_types as wire
from lokal.server.edge import decode_base64, parse_keep_alive, parse_tool_choice, respond, runtime_of
from lokal.server.streaming import SSE, Answer, JSONResponse, until_disconnected

router = APIRouter(prefix="/v1", tags=["anthropic"])


# ---- translation: wire → internal ------------------------------------------------------------------------


def system_text(system: str | list[dict[str, Any]] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system or None
    texts = []
    for block in system:
        if block.get("type") != "text":
            raise BadRequest("system blocks must be text blocks")
        texts.append(str(block.get("text", "")))
    return "\n\n".join(texts) or None


def _tool_result_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for block in content:
        if block.get("type") != "text":
            raise BadRequest("tool_result content must be text")
        texts.append(str(block.get("text", "")))
    return "\n".join(texts)


def to_messages(messages: list[wire.MessageParam]) -> list[internal.Message]:
    converted: list[internal.Message] = []
    tool_names: dict[str, str] = {}  # tool_use id → name, so results name their tool
    for message in messages:
        if isinstance(message.content, str):
            converted.append(internal.Message(role=message.role, content=message.content))
            continue
        texts: list[str] = []
        images: list[bytes] = []
        calls: list[dict[str, Any]] = []
        thinking: list[str] = []
        for block in message.content:
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "image":
                source = block.get("source") or {}
                if source.get("type") != "base64":
                    raise BadRequest("image blocks must have a base64 source; lokal does not fetch URLs")
                images.append(decode_base64(str(source.get("data", "")), "image data"))
            elif kind == "tool_use" and message.role == "assistant":
                tool_names[str(block.get("id", ""))] = str(block.get("name", ""))
                calls.append({"function": {"name": str(block.get("name", "")), "arguments": block.get("input") or {}}})
            elif kind == "tool_result" and message.role == "user":
                converted.append(internal.Message(role="tool", content=_tool_result_text(block.get("content")),
                                                  tool_name=tool_names.get(str(block.get("tool_use_id", "")))))
            elif kind in ("thinking", "redacted_thinking") and message.role == "assistant":
                thinking.append(str(block.get("thinking", "")))
            else:
                raise BadRequest(f"content block type {kind!r} is not supported in a {message.role} message")
        if texts or images or calls or not converted or converted[-1].role != "tool":
            converted.append(internal.Message(role=message.role, content="\n".join(texts), images=images or None,
                                              tool_calls=calls or None, thinking="".join(thinking) or None))
    return converted


def to_tools(tools: list[wire.ToolParam] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    converted = []
    for tool in tools:
        if tool.type not in (None, "custom"):
            raise BadRequest(f"tool type {tool.type!r} is a server tool, which a local server does not have")
        converted.append({"type": "function", "function": {"name": tool.name, "description": tool.description or "",
                                                           "parameters": tool.input_schema}})
    return converted


def to_generate_request(body: wire.CountTokensRequest) -> internal.GenerateRequest:
    messages = to_messages(body.messages)
    system = system_text(body.system)
    if system:
        messages.insert(0, internal.Message(role="system", content=system))
    think = None if body.thinking is None else body.thinking.type != "disabled"
    options: dict[str, Any] = {}
    if isinstance(body, wire.MessageRequest):
        if body.mcp_servers:
            raise BadRequest("MCP servers are not available on a local server")
        options = dict(body.options or {})
        mapped = {"num_predict": body.max_tokens, "temperature": body.temperature, "top_p": body.top_p,
                  "top_k": body.top_k, "stop": body.stop_sequences}
        options.update({name: value for name, value in mapped.items() if value is not None})
    return internal.GenerateRequest(
        model=body.model, messages=messages, tools=to_tools(body.tools), tool_choice=parse_tool_choice(body.tool_choice),
        options=options, think=think,
        keep_alive=parse_keep_alive(body.keep_alive) if isinstance(body, wire.MessageRequest) else None)


# ---- rendering: internal → wire --------------------------------------------------------------------------


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def stop_reason(done: internal.Done, num_calls: int, stop_sequences: Sequence[str] = ()) -> str:
    """Anthropic's reason; "stop_sequence" only for the request's own stop_sequences (not a model's PARAMETER
    stop, which ends a turn as the end-of-turn token does)."""
    if num_calls:
        return "tool_use"
    if done.stop_sequence is not None and done.stop_sequence in stop_sequences:
        return "stop_sequence"
    return "max_tokens" if done.reason == "length" else "end_turn"


def matched_stop(reason: str, done: internal.Done) -> str | None:
    return done.stop_sequence if reason == "stop_sequence" else None


def input_tokens(done: internal.Done) -> int:
    return done.prompt_count


def tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_" + secrets.token_hex(12), "name": call["function"]["name"],
            "input": call["function"]["arguments"]}


class MessageRenderer:
    """One message as Anthropic's stream: blocks are opened as the kind of output changes."""

    def __init__(self, model: str, allow_parallel: bool = True, stop_sequences: Sequence[str] = ()):
        self.model = model
        self.stop_sequences = stop_sequences
        self.id = "msg_" + secrets.token_hex(12)
        self.allow_parallel = allow_parallel
        self.started = False
        self.block: str | None = None  # kind of the open block
        self.index = -1
        self.num_calls = 0

    def _message(self, content: list[dict[str, Any]], reason: str | None, usage: dict[str, int],
                 stop_sequence: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": reason, "stop_sequence": stop_sequence, "usage": usage}

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        return sse("message_start", {"type": "message_start",
                                     "message": self._message([], None, {"input_tokens": 0, "output_tokens": 0})})

    def _close_block(self) -> bytes:
        if self.block is None:
            return b""
        out = b""
        if self.block == "thinking":
            out += sse("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                               "delta": {"type": "signature_delta", "signature": ""}})
        self.block = None
        return out + sse("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self.index += 1
        self.block = kind
        return out + sse("content_block_start", {"type": "content_block_start", "index": self.index,
                                                 "content_block": block})

    def _delta(self, kind: str, field: str, text: str) -> bytes:
        out = b""
        if self.block != kind:
            out += self._open(kind, {"type": kind, kind: ""} if kind != "thinking" else
                              {"type": "thinking", "thinking": "", "signature": ""})
        delta_type = "thinking_delta" if kind == "thinking" else "text_delta"
        return out + sse("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                 "delta": {"type": delta_type, field: text}})

    def _calls(self, calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        calls = list(calls or ())
        if not self.allow_parallel:
            calls = calls[: max(0, 1 - self.num_calls)]
        self.num_calls += len(calls)
        return calls

    def token(self, token: internal.Token) -> bytes:
        out = self._start()
        if token.thinking:
            out += self._delta("thinking", "thinking", token.thinking)
        if token.text:
            out += self._delta("text", "text", token.text)
        for call in self._calls(token.tool_calls):
            block = tool_use_block(call)
            arguments = json.dumps(block["input"], ensure_ascii=False)
            out += self._open("tool_use", {**block, "input": {}})
            out += sse("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                               "delta": {"type": "input_json_delta", "partial_json": arguments}})
        return out

    def done(self, done: internal.Done) -> bytes:
        out = self._start() + self._close_block()
        usage = {"input_tokens": input_tokens(done), "output_tokens": done.eval_count}
        reason = stop_reason(done, self.num_calls, self.stop_sequences)
        out += sse("message_delta", {"type": "message_delta", "usage": usage,
                                     "delta": {"stop_reason": reason, "stop_sequence": matched_stop(reason, done)}})
        return out + sse("message_stop", {"type": "message_stop"})

    def error(self, error: LokalError) -> bytes:
        return sse("error", wire.error_body(error.status, error.message))

    def final(self, done: internal.Done, answer: Answer) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if answer.thinking:
            content.append({"type": "thinking", "thinking": answer.thinking, "signature": ""})
        if answer.text:
            content.append({"type": "text", "text": answer.text})
        calls = self._calls(answer.tool_calls)
        content += [tool_use_block(call) for call in calls]
        usage = {"input_tokens": input_tokens(done), "output_tokens": done.eval_count}
        reason = stop_reason(done, len(calls), self.stop_sequences)
        return self._message(content, reason, usage, matched_stop(reason, done))


# ---- routes ---------------------------------------------------------------------------------------------


@router.post("/messages", response_model=wire.Message)
async def messages(body: wire.MessageRequest, request: Request) -> Response:
    """Answer a conversation (Anthropic's Messages API). Streams SSE events when ``stream`` is true."""
    allow_parallel = not (body.tool_choice or {}).get("disable_parallel_tool_use", False)
    events = runtime_of(request).generate(to_generate_request(body))
    renderer = MessageRenderer(body.model, allow_parallel, body.stop_sequences or ())
    return await respond(request, body.stream, events, renderer, SSE)


@router.post("/messages/count_tokens", response_model=wire.TokenCount)
async def count_tokens(body: wire.CountTokensRequest, request: Request) -> Response:
    """How many tokens the conversation's prompt is, as the model's template renders it."""
    count = await until_disconnected(request, runtime_of(request).count_tokens(to_generate_request(body)))
    return JSONResponse({"input_tokens": count})
