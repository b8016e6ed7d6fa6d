"""Wire types of the Ollama API, as the official clients send and parse them (Ollama's api/types.go).

Requests refuse unknown fields, so a typo (``"promt"``) is a 400 rather than a silently ignored option.
Responses are built as plain dicts in ollama_api.py (orjson, per token); the models below document them
and give /docs its schemas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from lokal.server.edge import WireModel, model_validator

# "json", a JSON schema object, or "" (no constraint).
Format = Union[Literal["", "json"], dict[str, Any], None]
# A duration such as "5m", "1h30m", a number of seconds, or a negative number for "forever".
KeepAlive = Union[float, str, None]


class ModelRequest(WireModel):
    """Base of requests that name one model. Accepts Ollama's deprecated ``name`` for ``model``."""

    model: str = Field(min_length=1)
    """Model name, e.g. ``smollm2`` or ``hf.co/owner/repo:Q4_K_M``."""

    @model_validator(mode="before")
    @classmethod
    def _name_is_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" in data and "model" not in data:
            data = dict(data)
            data["model"] = data.pop("name")
        return data


class ToolCallFunction(WireModel):
    name: str
    """Name of the function the model calls."""
    arguments: dict[str, Any] = Field(default_factory=dict)
    """Arguments as a JSON object."""
    index: int | None = None
    """Position of this call among the message's calls."""


class ToolCall(WireModel):
    function: ToolCallFunction
    """The function the model calls."""
    id: str | None = None
    """Identifier a tool result may refer to."""
    type: str | None = None
    """Always "function" when present."""


class Message(WireModel):
    role: Literal["system", "user", "assistant", "tool"]
    """Who says it: system, user, assistant or tool."""
    content: str = ""
    """Text of the message."""
    images: list[str] | None = None
    """Base64-encoded images, for multimodal models."""
    tool_calls: list[ToolCall] | None = None
    """Tool calls an assistant message made."""
    tool_name: str | None = None
    """For role "tool": the tool whose result this is."""
    tool_call_id: str | None = None
    """For role "tool": the call this result answers."""
    thinking: str | None = None
    """An assistant's reasoning, for thinking models."""


class GenerateOptions(WireModel):
    """Fields shared by /api/generate and /api/chat."""

    stream: bool = True
    """Stream NDJSON chunks (default) or answer with one object."""
    format: Format = None
    """"json" or a JSON schema: constrain the output to it."""
    options: dict[str, Any] | None = None
    """Model options (temperature, num_ctx, num_predict, stop, seed, …) over the model's own PARAMETERs."""
    keep_alive: KeepAlive = None
    """How long the model stays loaded after this request: "5m", 300, -1 (forever), 0 (unload now)."""
    think: bool | str | None = None
    """Thinking mode, for models that support it."""
    logprobs: bool | None = None
    """Return each generated token's log probability (from the model's logits, before sampling options)."""
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    """Number of likeliest alternatives per token (0-20) when logprobs is set."""


class GenerateRequest(ModelRequest, GenerateOptions):
    prompt: str | None = None
    """Prompt; empty loads the model (and unloads it when keep_alive is 0)."""
    suffix: str | None = None
    """Text after the insertion point, for fill-in-the-middle models."""
    system: str | None = None
    """System prompt, overriding the model's."""
    template: str | None = None
    """Prompt template, overriding the model's."""
    context: list[int] | None = None
    """Tokens returned by a previous response, to continue that conversation."""
    raw: bool = False
    """Send the prompt as is, without the template."""
    images: list[str] | None = None
    """Base64-encoded images, for multimodal models."""


class ChatRequest(ModelRequest, GenerateOptions):
    messages: list[Message] = Field(default_factory=list)
    """The conversation so far; empty loads the model."""
    tools: list[dict[str, Any]] | None = None
    """Tools the model may call (JSON schema function definitions), passed to the chat template."""


class EmbedRequest(ModelRequest):
    input: str | list[str] = Field(default_factory=list)
    """Text or list of texts to embed."""
    truncate: bool = True
    """Cut inputs longer than the context instead of failing."""
    dimensions: int | None = Field(default=None, ge=1)
    """Shorten each embedding to this many dimensions (renormalized)."""
    options: dict[str, Any] | None = None
    """Model options (num_ctx, …)."""
    keep_alive: KeepAlive = None
    """How long the model stays loaded after this request."""


class EmbeddingsRequest(ModelRequest):
    """The legacy /api/embeddings request."""

    prompt: str = ""
    """Text to embed."""
    options: dict[str, Any] | None = None
    """Model options (num_ctx, …)."""
    keep_alive: KeepAlive = None
    """How long the model stays loaded after this request."""


class PullRequest(ModelRequest):
    insecure: bool = False
    """Allow plain-HTTP registries."""
    stream: bool = True
    """Stream progress objects (default) or answer once at the end."""
    username: str | None = None
    """Unused; accepted for compatibility."""
    password: str | None = None
    """Unused; accepted for compatibility."""


class CreateRequest(ModelRequest):
    from_: str | None = Field(default=None, alias="from")
    """Existing model to build on (name in the store)."""
    files: dict[str, str] | None = None
    """File name → blob digest of GGUF files uploaded with /api/blobs; the model is made from them."""
    adapters: dict[str, str] | None = None
    """LoRA adapter GGUFs (file name → blob digest) for the base model's architecture, applied at scale 1."""
    template: str | None = None
    """Prompt template for the new model."""
    license: str | list[str] | None = None
    """License text(s) for the new model."""
    system: str | None = None
    """System prompt for the new model."""
    parameters: dict[str, Any] | None = None
    """Default options (PARAMETERs) for the new model."""
    messages: list[Message] | None = None
    """Conversation that precedes every chat with the new model."""
    quantize: str | None = None
    """Quantize the weights to this type (q4_0, q4_1, q5_0, q5_1, q8_0, q4_k_m, q4_k_s, …)."""
    knowledge: dict[str, str] | None = None
    """(lokal) Knowledge documents (name → blob digest of a text, Markdown or PDF file), a Modelfile's FILEs."""
    draft: str | None = None
    """(lokal) A Modelfile's DRAFT: the model that guesses ahead for speculative decoding, a model name in the
    store or the digest (sha256:<hex>) of a GGUF uploaded with /api/blobs; it must share the model's
    vocabulary."""
    stream: bool = True
    """Stream progress objects (default) or answer once at the end."""

    model_config = ConfigDict(populate_by_name=True)


class ShowRequest(ModelRequest):
    verbose: bool = False
    """Include every metadata value (token lists too)."""
    system: str | None = None
    """Unused; accepted for compatibility."""
    template: str | None = None
    """Unused; accepted for compatibility."""
    options: dict[str, Any] | None = None
    """Unused; accepted for compatibility."""


class DeleteRequest(ModelRequest):
    pass


class CopyRequest(WireModel):
    source: str = Field(min_length=1)
    """Existing model."""
    destination: str = Field(min_length=1)
    """New name for it."""


# ---- responses (documentation and /docs; handlers emit the same fields as dicts) -------------------------


class ModelDetails(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    parent_model: str = ""
    """The model this one was created from."""
    format: str = "gguf"
    """Weights file format."""
    family: str = ""
    """Architecture family (llama, gemma3, …)."""
    families: list[str] | None = None
    """Every family the model belongs to."""
    parameter_size: str = ""
    """Parameter count, e.g. "135M"."""
    quantization_level: str = ""
    """Weight quantization, e.g. "Q4_1"."""


class GenerateStats(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    model: str
    """The model, as the request named it."""
    created_at: datetime
    """When this chunk was made."""
    done: bool
    """True on the last object of a response."""
    done_reason: Literal["stop", "length", "load", "unload"] | None = None
    """Why generation ended (last object only)."""
    total_duration: int | None = None
    """Nanoseconds for the whole request."""
    load_duration: int | None = None
    """Nanoseconds spent loading the model."""
    prompt_eval_count: int | None = None
    """Prompt tokens evaluated (reused prefix tokens are not counted)."""
    prompt_eval_duration: int | None = None
    """Nanoseconds spent on the prompt."""
    eval_count: int | None = None
    """Tokens generated."""
    eval_duration: int | None = None
    """Nanoseconds spent generating."""


class TokenLogprob(BaseModel):
    token: str
    """The token's text (U+FFFD where it holds part of a UTF-8 character)."""
    logprob: float
    """Its natural-log probability."""
    bytes: list[int] | None = None
    """Its exact bytes."""


class Logprob(TokenLogprob):
    top_logprobs: list[TokenLogprob] | None = None
    """The likeliest tokens at this position, most likely first."""


class GenerateResponse(GenerateStats):
    response: str
    """Generated text; a fragment when streaming."""
    context: list[int] | None = None
    """Prompt and answer tokens, to continue the conversation (last object only)."""
    logprobs: list[Logprob] | None = None
    """The generated tokens' log probabilities when asked (this chunk's when streaming)."""


class ChatResponse(GenerateStats):
    message: Message
    """The assistant's message; a fragment when streaming."""
    logprobs: list[Logprob] | None = None
    """The generated tokens' log probabilities when asked (this chunk's when streaming)."""


class EmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class EmbeddingsResponse(BaseModel):
    embedding: list[float]


class ListModel(BaseModel):
    name: str
    model: str
    modified_at: datetime
    size: int
    digest: str
    details: ModelDetails


class ListResponse(BaseModel):
    models: list[ListModel]


class RunningModel(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    name: str
    model: str
    size: int
    """Bytes of memory the loaded model takes (weights, KV cache, buffers)."""
    digest: str
    details: ModelDetails
    expires_at: datetime
    """When the model unloads if idle; far in the future when kept forever."""
    size_vram: int
    """Bytes of that in GPU memory."""
    context_length: int
    """Context length per sequence."""
    format: str = "gguf"
    """lokal: gguf (llama.cpp) or onnx (ONNX Runtime GenAI)."""
    device: str = "cpu"
    """lokal: the device chosen from LOKAL_DEVICE (cpu, gpu, npu)."""
    device_reason: str = ""
    """lokal: why that device (preferred, or which ones were skipped and why)."""
    concurrency: str = "batch"
    """lokal: batch (continuous batching over num_parallel slots) or queue (one request at a time)."""
    num_parallel: int = 1
    """lokal: requests the model decodes at once (1 for a queue); more wait in LOKAL_MAX_QUEUE's queue."""


class ProcessResponse(BaseModel):
    models: list[RunningModel]


class ProgressResponse(BaseModel):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class ShowResponse(BaseModel):
    license: str | None = None
    modelfile: str
    parameters: str | None = None
    template: str | None = None
    system: str | None = None
    details: ModelDetails
    messages: list[Message] | None = None
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: datetime


class VersionResponse(BaseModel):
    version: str


class StatusResponse(BaseModel):
    status: str


class ErrorResponse(BaseModel):
    error: str
