"""Wire types of OpenAI's Responses API (/v1/responses), as the official ``openai`` client sends them.

Input items and tools stay plain dicts: responses_api.py reads the kinds it supports (messages,
function calls and their outputs, function tools) and refuses the others with a clear 400.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from lokal.server.edge import WireModel


class TextConfig(WireModel):
    format: dict[str, Any] | None = None
    """{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "name", "schema", "strict"}."""
    verbosity: str | None = None
    """Ignored."""


class ReasoningConfig(WireModel):
    effort: str | None = None
    """Thinking for models that think: "low", "medium", "high" ("none"/"minimal": off)."""
    summary: str | None = None
    """Ignored: reasoning is returned whole."""
    generate_summary: str | None = None
    """Ignored."""


class ResponseRequest(WireModel):
    model: str = Field(min_length=1)
    """Model name in the store."""
    input: str | list[dict[str, Any]] = ""
    """Text, or items: messages ({"role", "content"}), function_call and function_call_output items."""
    instructions: str | None = None
    """A system message for this response (not carried to the next one)."""
    previous_response_id: str | None = None
    """Continue the stored conversation that response ended."""
    tools: list[dict[str, Any]] | None = None
    """Function tools: {"type": "function", "name", "description", "parameters"}."""
    tool_choice: str | dict[str, Any] | None = None
    """"auto", "none", "required" or {"type": "function", "name"}; required and named are enforced."""
    parallel_tool_calls: bool | None = None
    """false: at most one function call."""
    text: TextConfig | None = None
    """Output format (json_schema constrains the output with a grammar)."""
    reasoning: ReasoningConfig | None = None
    """Thinking, for models that think."""
    max_output_tokens: int | None = Field(default=None, ge=1)
    """Most tokens to generate."""
    temperature: float | None = Field(default=None, ge=0)
    """Sampling temperature."""
    top_p: float | None = Field(default=None, ge=0, le=1)
    """Nucleus sampling mass."""
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    """Likeliest alternatives per output_text token (0-20); with it or the include below, logprobs are returned."""
    stream: bool = False
    """Stream typed server-sent events (response.created … response.completed)."""
    store: bool = True
    """Keep the response (in the store directory) for previous_response_id and GET; false keeps nothing."""
    metadata: dict[str, Any] | None = None
    """Returned with the response."""
    user: str | None = None
    """Ignored."""
    safety_identifier: str | None = None
    """Ignored."""
    prompt_cache_key: str | None = None
    """Ignored: prompt prefixes are reused automatically."""
    service_tier: str | None = None
    """Ignored."""
    truncation: str | None = None
    """Ignored: a chat too long for the context drops its oldest turns."""
    include: list[str] | None = None
    """"message.output_text.logprobs" returns each output_text token's log probability; other values are ignored."""
    background: bool | None = None
    """Not supported (responses are answered in the request)."""
    stream_options: dict[str, Any] | None = None
    """Ignored."""
    options: dict[str, Any] | None = None
    """lokal extension: Ollama options (num_ctx, seed, …)."""
    keep_alive: float | str | None = None
    """lokal extension: how long the model stays loaded after this request."""


# ---- responses (for /docs) -------------------------------------------------------------------------------


class ResponseUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class Response(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress"]
    model: str
    output: list[dict[str, Any]]
    """message, function_call and reasoning items."""
    usage: ResponseUsage | None = None
    previous_response_id: str | None = None


class InputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class Deleted(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
