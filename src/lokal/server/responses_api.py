"""OpenAI's Responses API (/v1/responses), stateful as OpenAI's is (Ollama's is not): a response with
``store`` (the default) is kept in the store directory (``lokal.store.responses``), so
``previous_response_id`` continues its conversation (the continued prompt starts with the same tokens,
so the engine's prefix cache skips recomputing them) and GET / DELETE / input_items find it.

Input items become ``Message``s on the one runtime path; the event stream becomes the typed SSE events
(``response.created`` … ``response.output_text.delta`` … ``response.completed``) or one response object.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Callable

import anyio
from fastapi import APIRouter, Request, Response

from lokal import types as internal
from lokal.errors import BadRequest, LokalError
from lokal.server import responses_types as wire
from lokal.server.edge import (decode_base64, parse_keep_alive, parse_logprobs, parse_think, parse_tool_choice,
                               respond, runtime_of, wire_logprobs)
from lokal.server.streaming import SSE, Answer, JSONResponse
from lokal.store.responses import ResponseStore, StoredResponse

router = APIRouter(prefix="/v1", tags=["openai"])


def response_store(request: Request) -> ResponseStore:
    return ResponseStore(runtime_of(request).settings.models)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


# ---- translation: wire → internal ------------------------------------------------------------------------


def message_dict(message: internal.Message) -> dict[str, Any]:
    """A message as stored for the next turn (images are not kept)."""
    return {key: value for key, value in {"role": message.role, "content": message.content,
                                          "tool_calls": message.tool_calls, "tool_name": message.tool_name,
                                          "thinking": message.thinking}.items() if value is not None}


def _content_text_and_images(content: Any) -> tuple[str, list[bytes] | None]:
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or a list of content parts")
    texts: list[str] = []
    images: list[bytes] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            texts.append(str(part.get("text", "")))
        elif kind == "input_image":
            url = str(part.get("image_url") or "")
            if not url.startswith("data:") or ";base64," not in url:
                raise BadRequest("input_image must be a data: URL with base64 content; lokal does not fetch URLs")
            images.append(decode_base64(url.split(";base64,", 1)[1], "input_image data"))
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        else:
            raise BadRequest(f"content part type {kind!r} is not supported (use input_text or input_image)")
    return "\n".join(texts), images or None


def to_messages(items: str | list[dict[str, Any]], call_names: dict[str, str]) -> list[internal.Message]:
    """Input items → messages. ``call_names`` maps call ids to function names (earlier turns fill it)."""
    if isinstance(items, str):
        return [internal.Message(role="user", content=items)] if items else []
    messages: list[internal.Message] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise BadRequest(f"message role {role!r} is not supported (use user, assistant, system or developer)")
            text, images = _content_text_and_images(item.get("content", ""))
            messages.append(internal.Message(role="system" if role == "developer" else role, content=text,
                                             images=images))
        elif kind == "function_call":
            call = {"function": {"name": str(item.get("name", "")), "arguments": _arguments(item.get("arguments"))}}
            call_names[str(item.get("call_id", ""))] = call["function"]["name"]
            if messages and messages[-1].role == "assistant" and messages[-1].tool_calls and not messages[-1].content:
                messages[-1].tool_calls.append(call)
            else:
                messages.append(internal.Message(role="assistant", content="", tool_calls=[call]))
        elif kind == "function_call_output":
            output = item.get("output", "")
            text = output if isinstance(output, str) else _content_text_and_images(output)[0]
            messages.append(internal.Message(role="tool", content=text,
                                             tool_name=call_names.get(str(item.get("call_id", "")))))
        elif kind == "reasoning":
            continue  # earlier reasoning is not fed back, as with chat templates that drop it
        else:
            raise BadRequest(f"input item type {kind!r} is not supported")
    return messages


def _arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value or "{}")
    except (TypeError, json.JSONDecodeError):
        raise BadRequest(f"function_call arguments are not valid JSON: {value!r}") from None
    if not isinstance(parsed, dict):
        raise BadRequest("function_call arguments must be a JSON object")
    return parsed


def to_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    converted = []
    for tool in tools:
        if tool.get("type") != "function":
            raise BadRequest(f"tool type {tool.get('type')!r} is not available on a local server (use function)")
        if not tool.get("name"):
            raise BadRequest("every function tool needs a name")
        converted.append({"type": "function", "function": {
            "name": tool["name"], "description": tool.get("description") or "",
            "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}})
    return converted


def wants_logprobs(body: wire.ResponseRequest) -> bool:
    """OpenAI returns output_text logprobs when ``include`` names them; asking for alternatives implies them."""
    return "message.output_text.logprobs" in (body.include or ()) or bool(body.top_logprobs)


def text_format(text: wire.TextConfig | None) -> internal.Format:
    fmt = text.format if text else None
    if not fmt or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return "json"
    if fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("text.format.schema must be a JSON schema object")
        return schema
    raise BadRequest(f"text.format type {fmt.get('type')!r} is not supported (use text, json_object or json_schema)")


# ---- rendering: internal → wire --------------------------------------------------------------------------


def sse(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class ResponsesRenderer:
    """One response, streamed as typed events or returned whole; ``on_done`` receives the finished response
    object and its output as messages (to store the conversation)."""

    def __init__(self, body: wire.ResponseRequest, on_done: Callable[[dict[str, Any], internal.Message], None]):
        self.on_done = on_done
        self.allow_parallel = body.parallel_tool_calls is not False
        self.sequence = 0
        self.started = False
        self.output: list[dict[str, Any]] = []
        self.open_item: dict[str, Any] | None = None
        self.answer = Answer()
        self.response = {
            "id": new_id("resp_"), "object": "response", "created_at": int(time.time()), "status": "in_progress",
            "model": body.model, "output": [], "instructions": body.instructions, "error": None,
            "incomplete_details": None, "metadata": body.metadata or {}, "parallel_tool_calls": self.allow_parallel,
            "previous_response_id": body.previous_response_id, "store": body.store,
            "temperature": body.temperature, "top_p": body.top_p, "max_output_tokens": body.max_output_tokens,
            "tool_choice": body.tool_choice or "auto", "tools": body.tools or [],
            "text": {"format": (body.text.format if body.text and body.text.format else {"type": "text"})},
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None, "summary": None},
            "truncation": "disabled", "usage": None, "top_logprobs": body.top_logprobs}

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(event)

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        return (self._event("response.created", response=dict(self.response))
                + self._event("response.in_progress", response=dict(self.response)))

    def _close(self) -> bytes:
        item, self.open_item = self.open_item, None
        if item is None:
            return b""
        index = len(self.output)
        item["status"] = "completed"
        out = b""
        if item["type"] == "message":
            part = item["content"][0]
            out += self._event("response.output_text.done", item_id=item["id"], output_index=index,
                               content_index=0, text=part["text"], logprobs=part["logprobs"])
            out += self._event("response.content_part.done", item_id=item["id"], output_index=index,
                               content_index=0, part=part)
        elif item["type"] == "reasoning":
            text = item["content"][0]["text"]
            out += self._event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                               content_index=0, text=text)
        self.output.append(item)
        return out + self._event("response.output_item.done", output_index=index, item=item)

    def _delta(self, kind: str, text: str, logprobs: list[internal.Logprob] | None = None) -> bytes:
        out = b""
        index = len(self.output)
        if self.open_item is None or self.open_item["type"] != kind:
            out += self._close()
            index = len(self.output)
            if kind == "message":
                self.open_item = {"type": "message", "id": new_id("msg_"), "status": "in_progress",
                                  "role": "assistant", "content": []}
            else:
                self.open_item = {"type": "reasoning", "id": new_id("rs_"), "summary": [], "content": []}
            out += self._event("response.output_item.added", output_index=index,
                               item={**self.open_item, "content": []})
            part = ({"type": "output_text", "text": "", "annotations": [], "logprobs": []} if kind == "message"
                    else {"type": "reasoning_text", "text": ""})
            self.open_item["content"].append(part)
            if kind == "message":
                out += self._event("response.content_part.added", item_id=self.open_item["id"], output_index=index,
                                   content_index=0, part=dict(part))
        self.open_item["content"][0]["text"] += text
        event = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {}
        if kind == "message":
            extra["logprobs"] = wire_logprobs(logprobs or [])
            self.open_item["content"][0]["logprobs"] += extra["logprobs"]
        return out + self._event(event, item_id=self.open_item["id"], output_index=index, content_index=0,
                                 delta=text, **extra)

    def _calls(self, calls: list[dict[str, Any]] | None) -> bytes:
        out = b""
        for call in calls or ():
            if not self.allow_parallel and any(item["type"] == "function_call" for item in self.output):
                break
            out += self._close()
            index = len(self.output)
            arguments = json.dumps(call["function"]["arguments"], ensure_ascii=False)
            item = {"type": "function_call", "id": new_id("fc_"), "call_id": new_id("call_"),
                    "name": call["function"]["name"], "arguments": "", "status": "in_progress"}
            out += self._event("response.output_item.added", output_index=index, item=dict(item))
            out += self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                               delta=arguments)
            out += self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                               arguments=arguments)
            item.update(arguments=arguments, status="completed")
            self.output.append(item)
            out += self._event("response.output_item.done", output_index=index, item=item)
        return out

    def token(self, token: internal.Token) -> bytes:
        self.answer.add(token)
        out = self._start()
        if token.thinking:
            out += self._delta("reasoning", token.thinking)
        if token.text:  # output_text logprobs: those of a token's text (reasoning has none)
            out += self._delta("message", token.text, token.logprobs)
        return out + self._calls(token.tool_calls)

    def _finish(self, done: internal.Done) -> dict[str, Any]:
        prompt_tokens = done.prompt_count
        incomplete = done.reason == "length"
        self.response.update(
            status="incomplete" if incomplete else "completed", output=self.output,
            incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
            usage={"input_tokens": prompt_tokens, "output_tokens": done.eval_count,
                   "total_tokens": prompt_tokens + done.eval_count,
                   "input_tokens_details": {"cached_tokens": max(0, prompt_tokens - done.prompt_eval_count)},
                   "output_tokens_details": {"reasoning_tokens": 0}})
        calls = [{"function": {"name": item["name"], "arguments": json.loads(item["arguments"])}}
                 for item in self.output if item["type"] == "function_call"]
        self.on_done(self.response, internal.Message(role="assistant", content=self.answer.text,
                                                     tool_calls=calls or None))
        return self.response

    def done(self, done: internal.Done) -> bytes:
        out = self._start() + self._close()
        response = self._finish(done)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return out + self._event(kind, response=response)

    def error(self, error: LokalError) -> bytes:
        self.response.update(status="failed", error={"code": "server_error", "message": error.message})
        return self._event("response.failed", response=self.response) + self._event(
            "error", code=None, message=error.message, param=None)

    def final(self, done: internal.Done, answer: Answer) -> dict[str, Any]:
        self.answer = answer
        if answer.thinking:
            self.output.append({"type": "reasoning", "id": new_id("rs_"), "summary": [],
                                "content": [{"type": "reasoning_text", "text": answer.thinking}]})
        if answer.text:
            self.output.append({"type": "message", "id": new_id("msg_"), "status": "completed", "role": "assistant",
                                "content": [{"type": "output_text", "text": answer.text, "annotations": [],
                                             "logprobs": wire_logprobs(answer.logprobs or [])}]})
        self._calls(answer.tool_calls)
        return self._finish(done)


# ---- routes ---------------------------------------------------------------------------------------------


@router.post("/responses", response_model=wire.Response)
async def create_response(body: wire.ResponseRequest, request: Request) -> Response:
    """Answer input items (or text), optionally continuing a stored response's conversation."""
    if body.background:
        raise BadRequest("background responses are not supported: omit background")
    store = response_store(request)
    conversation: list[internal.Message] = []
    call_names: dict[str, str] = {}  # call id → function name, so function_call_output items name their tool
    if body.previous_response_id:
        previous = await anyio.to_thread.run_sync(store.get, body.previous_response_id)
        conversation = [internal.Message(**message) for message in previous.messages]
        for item in previous.input_items + previous.response["output"]:
            if item.get("type") == "function_call":
                call_names[str(item.get("call_id"))] = str(item.get("name"))
    new_messages = to_messages(body.input, call_names)
    if not new_messages:
        raise BadRequest("input must not be empty")
    instructions = [internal.Message(role="system", content=body.instructions)] if body.instructions else []
    options = dict(body.options or {})
    mapped = {"num_predict": body.max_output_tokens, "temperature": body.temperature, "top_p": body.top_p}
    options.update({name: value for name, value in mapped.items() if value is not None})
    generate_request = internal.GenerateRequest(
        model=body.model, messages=instructions + conversation + new_messages, tools=to_tools(body.tools),
        tool_choice=parse_tool_choice(body.tool_choice), format=text_format(body.text), options=options,
        think=parse_think(body.reasoning.effort) if body.reasoning else None,
        keep_alive=parse_keep_alive(body.keep_alive), logprobs=parse_logprobs(wants_logprobs(body), body.top_logprobs))
    input_items = ([{"type": "message", "role": "user", "content": [{"type": "input_text", "text": body.input}]}]
                   if isinstance(body.input, str) else list(body.input))
    input_items = [{"id": item.get("id") or new_id("item_"), **item} for item in input_items]

    def on_done(response: dict[str, Any], output: internal.Message) -> None:
        if body.store:
            messages = [message_dict(m) for m in conversation + new_messages + [output]]
            store.save(StoredResponse(response, input_items, messages))

    renderer = ResponsesRenderer(body, on_done)
    events = runtime_of(request).generate(generate_request)
    return await respond(request, body.stream, events, renderer, SSE)


@router.get("/responses/{response_id}", response_model=wire.Response)
async def get_response(response_id: str, request: Request) -> Response:
    stored = await anyio.to_thread.run_sync(response_store(request).get, response_id)
    return JSONResponse(stored.response)


@router.delete("/responses/{response_id}", response_model=wire.Deleted)
async def delete_response(response_id: str, request: Request) -> Response:
    await anyio.to_thread.run_sync(response_store(request).delete, response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get("/responses/{response_id}/input_items", response_model=wire.InputItemList)
async def input_items(response_id: str, request: Request) -> Response:
    items = (await anyio.to_thread.run_sync(response_store(request).get, response_id)).input_items
    return JSONResponse({"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
                         "last_id": items[-1]["id"] if items else None, "has_more": False})

