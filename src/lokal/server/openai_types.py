"""Wire types of the OpenAI-compatible API (/v1), as the official ``openai`` client sends them.

Every field the client can send is declared, so unknown fields (typos) are a 400. Fields that change
what a request means but that lokal cannot do (n > 1, audio) are refused with a clear 400 in
openai_api.py; fields with no effect on a local server (user, store, metadata, service_tier, …) are
accepted and ignored.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, Field

from lokal.server.edge import WireModel

Stop = Union[str, list[str], None]


class StreamOptions(WireModel):
    include_usage: bool = False
    """Send one more chunk, with empty choices, that carries the token usage."""
    include_obfuscation: bool | None = None
    """Ignored: there is no network observer to pad against."""


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    """Who says it; "developer" is treated as "system"."""
    content: str | list[dict[str, Any]] | None = None
    """Text, or content parts: {"type": "text", "text"} and {"type": "image_url", "image_url": {"url": "data:…"}}."""
    name: str | None = None
    """Participant name; ignored."""
    tool_calls: list[dict[str, Any]] | None = None
    """Tool calls an assistant message made ({"id", "type": "function", "function": {"name", "arguments"}})."""
    tool_call_id: str | None = None
    """For role "tool": the call this result answers."""
    refusal: str | None = None
    """An assistant's refusal text; ignored."""
    audio: dict[str, Any] | None = None
    """Not supported."""
    function_call: dict[str, Any] | None = None
    """Deprecated function calling; not supported (use tools)."""


class SamplingFields(WireModel):
    """Fields shared by chat and legacy completions."""

    model: str = Field(min_length=1)
    """Model name in the store, e.g. ``smollm2``."""
    frequency_penalty: float | None = None
    """Penalize tokens by how often they appeared (−2 … 2)."""
    presence_penalty: float | None = None
    """Penalize tokens that appeared at all (−2 … 2)."""
    max_tokens: int | None = None
    """Most tokens to generate."""
    n: int | None = None
    """Number of choices; only 1 is supported."""
    seed: int | None = None
    """Sampling seed, for reproducible answers."""
    stop: Stop = None
    """Up to 4 strings that end the answer."""
    stream: bool | None = None
    """Stream server-sent events, ending with ``data: [DONE]``."""
    stream_options: StreamOptions | None = None
    """Streaming options (include_usage)."""
    temperature: float | None = None
    """Sampling temperature (0 = greedy)."""
    top_p: float | None = None
    """Nucleus sampling mass."""
    ignore_eos: bool | None = None
    """Generate exactly max_tokens, past end-of-generation tokens (as llama.cpp's server and vLLM accept)."""
    logit_bias: dict[str, int] | None = None
    """Not supported."""
    user: str | None = None
    """End-user identifier; ignored."""
    options: dict[str, Any] | None = None
    """lokal extension: Ollama options (num_ctx, top_k, repeat_penalty, …), e.g. through the client's extra_body."""
    keep_alive: float | str | None = None
    """lokal extension: how long the model stays loaded after this request ("5m", 300, -1, 0)."""


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    """The conversation so far."""
    max_completion_tokens: int | None = None
    """Most tokens to generate (preferred over max_tokens)."""
    response_format: dict[str, Any] | None = None
    """{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": …}}."""
    tools: list[dict[str, Any]] | None = None
    """Tools the model may call ({"type": "function", "function": {"name", "description", "parameters"}})."""
    tool_choice: str | dict[str, Any] | None = None
    """"auto" (default), "none", "required" or {"type": "function", "function": {"name"}}; required and a
    named function are enforced with a grammar built from the function's parameters schema."""
    parallel_tool_calls: bool | None = None
    """false: at most one tool call per answer."""
    logprobs: bool | None = None
    """Return each content token's log probability (from the model's logits, before sampling options)."""
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    """Number of likeliest alternatives per token (0-20); needs logprobs: true."""
    metadata: dict[str, Any] | None = None
    """Ignored."""
    store: bool | None = None
    """Ignored: nothing is stored."""
    service_tier: str | None = None
    """Ignored."""
    reasoning_effort: str | None = None
    """Thinking for models that think ("low", "medium", "high"; "none" turns it off)."""
    verbosity: str | None = None
    """Ignored."""
    modalities: list[str] | None = None
    """Only "text" is supported."""
    audio: dict[str, Any] | None = None
    """Not supported."""
    prediction: dict[str, Any] | None = None
    """Ignored."""
    prompt_cache_key: str | None = None
    """Ignored: prompt prefixes are reused automatically."""
    prompt_cache_retention: str | None = None
    """Ignored."""
    prompt_cache_options: dict[str, Any] | None = None
    """Ignored."""
    safety_identifier: str | None = None
    """Ignored."""
    moderation: dict[str, Any] | None = None
    """Not supported."""
    web_search_options: dict[str, Any] | None = None
    """Not supported."""
    functions: list[dict[str, Any]] | None = None
    """Deprecated; not supported (use tools)."""
    function_call: str | dict[str, Any] | None = None
    """Deprecated; not supported (use tools)."""


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    """The text to continue (one string)."""
    suffix: str | None = None
    """Text after the insertion point (fill-in-the-middle)."""
    echo: bool | None = None
    """Put the prompt in front of the answer."""
    best_of: int | None = None
    """Only 1 is supported."""
    logprobs: int | None = Field(default=None, ge=0, le=5)
    """Return each token's log probability and this many likeliest alternatives (0-5)."""


class EmbeddingRequest(WireModel):
    model: str = Field(min_length=1)
    """Model name in the store."""
    input: str | list[str] | list[int] | list[list[int]]
    """Text or list of texts."""
    encoding_format: Literal["float", "base64"] = "float"
    """Floats, or base64 of little-endian float32."""
    dimensions: int | None = Field(default=None, ge=1)
    """Shorten each embedding to this many dimensions (renormalized)."""
    user: str | None = None
    """Ignored."""
    options: dict[str, Any] | None = None
    """lokal extension: Ollama options (num_ctx, …)."""
    keep_alive: float | str | None = None
    """lokal extension: how long the model stays loaded after this request."""


# ---- responses (for /docs; the handlers build the same shapes as dicts) ----------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


# ---- errors ---------------------------------------------------------------------------------------------

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
                499: "cancelled", 503: "server_busy"}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    error_type = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class InputTokens(BaseModel):
    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int
    """Tokens of the templated prompt."""
