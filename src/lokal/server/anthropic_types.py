"""Wire types of Anthropic's Messages API (/v1/messages), as the official ``anthropic`` client sends them.

Content blocks stay plain dicts (text, image, tool_use, tool_result, thinking): anthropic_api.py reads the
kinds it supports and refuses the others with a clear 400.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from lokal.server.edge import WireModel

# Anthropic's error types by status, as its API answers them.
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                499: "invalid_request_error", 503: "overloaded_error"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error object: ``{"type": "error", "error": {"type", "message"}}``."""
    error_type = _ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": error_type, "message": message}}


class MessageParam(WireModel):
    role: Literal["user", "assistant"]
    """Who says it."""
    content: str | list[dict[str, Any]]
    """Text, or content blocks: text, image (base64 source), tool_use, tool_result, thinking."""


class ThinkingConfig(WireModel):
    type: Literal["enabled", "disabled", "adaptive"]
    """"enabled": the model's reasoning comes back as thinking blocks (models that think)."""
    budget_tokens: int | None = None
    """Accepted; the reasoning ends when the model ends it."""


class ToolParam(WireModel):
    name: str = Field(min_length=1)
    """Function name."""
    description: str | None = None
    """What the tool does, for the model."""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """JSON schema of the tool's input."""
    type: str | None = None
    """"custom" or absent; Anthropic's server tools are not available locally."""
    cache_control: dict[str, Any] | None = None
    """Ignored."""


class CountTokensRequest(WireModel):
    model: str = Field(min_length=1)
    """Model name in the store."""
    messages: list[MessageParam] = Field(min_length=1)
    """The conversation so far."""
    system: str | list[dict[str, Any]] | None = None
    """System prompt: text or text blocks."""
    tools: list[ToolParam] | None = None
    """Tools the model may call."""
    tool_choice: dict[str, Any] | None = None
    """{"type": "auto" | "any" | "none" | "tool", "name"}."""
    thinking: ThinkingConfig | None = None
    """Thinking, for models that think."""


class MessageRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    """Most tokens to generate."""
    stop_sequences: list[str] | None = None
    """Strings that end the answer."""
    stream: bool = False
    """Stream Anthropic's server-sent events (message_start … message_stop)."""
    temperature: float | None = Field(default=None, ge=0)
    """Sampling temperature."""
    top_p: float | None = Field(default=None, ge=0, le=1)
    """Nucleus sampling mass."""
    top_k: int | None = Field(default=None, ge=0)
    """Sample only from the k likeliest tokens."""
    metadata: dict[str, Any] | None = None
    """Ignored."""
    service_tier: str | None = None
    """Ignored."""
    container: Any = None
    """Not available locally; ignored."""
    mcp_servers: list[dict[str, Any]] | None = None
    """Not supported."""
    options: dict[str, Any] | None = None
    """lokal extension: Ollama options (num_ctx, seed, …)."""
    keep_alive: float | str | None = None
    """lokal extension: how long the model stays loaded after this request."""


# ---- responses (for /docs) -------------------------------------------------------------------------------


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[dict[str, Any]]
    """thinking, text and tool_use blocks."""
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(BaseModel):
    input_tokens: int
