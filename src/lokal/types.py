"""The one internal request type and the one event stream every API flavour translates to and from.

Ollama NDJSON, OpenAI SSE, the CLI and the in-process ``LLM`` are renderers of ``Token`` … ``Done``.
Option names and defaults are Ollama's. Sampling options never reload a model; load options may.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from lokal.errors import BadRequest


@dataclass
class SamplingOptions:
    """Per-request sampling; applied through llama.cpp's C sampler chain."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    num_predict: int = -1
    num_keep: int = 4
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False


@dataclass
class LoadOptions:
    """Options fixed when a model is loaded; a request that changes one reloads the model."""

    num_ctx: int | None = None  # per sequence; None = min(4096, trained context) or LOKAL_CONTEXT_LENGTH
    num_batch: int = 512
    num_gpu: int = -1  # layers to offload; -1 = all that a GPU build can take, 0 = CPU only
    num_thread: int | None = None
    use_mmap: bool = True
    use_mlock: bool = False
    num_parallel: int | None = None  # LOKAL_NUM_PARALLEL when None
    flash_attention: bool | None = None  # LOKAL_FLASH_ATTENTION when None
    draft_num_predict: int | None = None  # speculative decoding's guesses per step; LOKAL_DRAFT_NUM_PREDICT when None
    adapter_scale: float = 1.0  # how strongly the model's LoRA ADAPTERs apply (llama.cpp's adapter scale)


_SAMPLING_FIELDS = {f.name: f for f in fields(SamplingOptions)}
_LOAD_FIELDS = {f.name: f for f in fields(LoadOptions)}
# Options Ollama accepts that llama.cpp's sampler chain here has no use for; accepted and ignored.
_IGNORED_OPTIONS = {"mirostat", "mirostat_eta", "mirostat_tau", "tfs_z", "penalize_newline", "numa",
                    "low_vram", "f16_kv", "vocab_only", "main_gpu", "logits_all", "embedding_only"}
# Modelfile spellings people use (the seed writes `context_length`).
_ALIASES = {"context_length": "num_ctx", "num_threads": "num_thread", "max_tokens": "num_predict"}


def _coerce(name: str, annotation: str, value: Any) -> Any:
    kind = annotation.replace(" | None", "")
    if value is None and "None" in annotation:
        return None
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            if not isinstance(value, (bool, int)):
                raise ValueError
            return bool(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "list[str]":
            if isinstance(value, str):
                return [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return list(value)
    except (TypeError, ValueError):
        pass
    raise BadRequest(f"option {name!r} must be {kind.replace('list[str]', 'a list of strings')}, got {value!r}")


def split_options(options: dict[str, Any] | None, base_sampling: SamplingOptions | None = None,
                  base_load: LoadOptions | None = None) -> tuple[SamplingOptions, LoadOptions]:
    """Ollama's flat ``options`` object → validated (sampling, load) options over the given bases
    (a model's Modelfile PARAMETERs). Unknown names are a 400, as a typo would otherwise go unnoticed."""
    sampling = SamplingOptions(**{k: getattr(base_sampling, k) for k in _SAMPLING_FIELDS}) if base_sampling \
        else SamplingOptions()
    load = LoadOptions(**{k: getattr(base_load, k) for k in _LOAD_FIELDS}) if base_load else LoadOptions()
    if options is None:
        return sampling, load
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    for raw_name, value in options.items():
        if value is None:  # null means unset, as in Ollama: the model's PARAMETER or the default applies
            continue
        name = _ALIASES.get(raw_name, raw_name)
        if name in _SAMPLING_FIELDS:
            target, spec = sampling, _SAMPLING_FIELDS[name]
        elif name in _LOAD_FIELDS:
            target, spec = load, _LOAD_FIELDS[name]
        elif name in _IGNORED_OPTIONS:
            continue
        else:
            raise BadRequest(f"unknown option {raw_name!r}")
        setattr(target, name, _coerce(raw_name, str(spec.type), value))
    _validate(sampling, load)
    return sampling, load


def _validate(sampling: SamplingOptions, load: LoadOptions) -> None:
    if sampling.temperature < 0:
        raise BadRequest("temperature must be >= 0")
    if not 0 <= sampling.top_p <= 1 or not 0 <= sampling.min_p <= 1:
        raise BadRequest("top_p and min_p must be between 0 and 1")
    if sampling.top_k < 0:
        raise BadRequest("top_k must be >= 0")
    if load.num_ctx is not None and load.num_ctx < 16:
        raise BadRequest("num_ctx must be at least 16")
    if load.num_batch < 1:
        raise BadRequest("num_batch must be at least 1")
    if load.num_parallel is not None and load.num_parallel < 1:
        raise BadRequest("num_parallel must be at least 1")


@dataclass
class Message:
    role: str  # system | user | assistant | tool
    content: str = ""
    images: list[bytes] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    thinking: str | None = None


Format = None | Literal["json"] | dict[str, Any]
# Thinking: unset (the model's default), on/off, or an effort level ("low", "medium", "high").
Think = bool | Literal["low", "medium", "high"] | None


@dataclass
class GenerateRequest:
    """What every API turns a request into. Exactly one of ``prompt`` / ``messages`` is set for text
    generation; neither means "load the model" (or unload it when keep_alive is 0)."""

    model: str
    prompt: str | None = None
    messages: list[Message] | None = None
    system: str | None = None
    template: str | None = None
    suffix: str | None = None
    raw: bool = False
    context: list[int] | None = None  # Ollama's /api/generate conversation tokens
    images: list[bytes] | None = None
    tools: list[dict[str, Any]] | None = None
    # "auto" (default), "none", "required" or a function's name; required/named force a call by grammar.
    tool_choice: str | None = None
    format: Format = None
    options: dict[str, Any] | None = None
    keep_alive: float | None = None  # seconds; None = LOKAL_KEEP_ALIVE
    truncate: bool = True
    think: Think = None
    # None: no log-probabilities; n: each generated token's, with its n likeliest alternatives (0–20).
    logprobs: int | None = None


@dataclass
class EmbedRequest:
    model: str
    input: list[str]
    truncate: bool = True
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | None = None


MAX_TOP_LOGPROBS = 20


@dataclass(slots=True)
class Logprob:
    """A token's log-probability under the model at its position: the log-softmax of the raw logits there,
    before sampling options reshape them (as Ollama, llama-server's n_probs and OpenAI report). ``piece`` is
    its exact bytes (part of a UTF-8 character for some tokens; ``token`` then shows U+FFFD), and
    ``top_logprobs`` the likeliest tokens at that position, most likely first (empty for the alternatives)."""

    token: str
    logprob: float
    piece: bytes
    top_logprobs: list[Logprob] = field(default_factory=list)


@dataclass(slots=True)
class Token:
    """Text decoded in one engine step for one request (one or more tokens, UTF-8 complete). After the
    runtime splits the output, ``text`` is the answer's content, ``thinking`` its reasoning and
    ``tool_calls`` the calls completed in this step (``{"function": {"name", "arguments": {…}}}``)."""

    text: str
    ids: list[int]
    thinking: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[Logprob] | None = None  # one per generated token of ``ids``, when the request asked


DoneReason = Literal["stop", "length", "load", "unload"]


@dataclass
class Done:
    """Last event of every generation. Durations are nanoseconds, as Ollama reports them."""

    reason: DoneReason
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    load_duration: int = 0
    total_duration: int = 0
    context: list[int] = field(default_factory=list)  # prompt + generated tokens
    # The whole prompt's tokens, a reused prefix included (OpenAI's prompt_tokens; prompt_eval_count leaves
    # the reused prefix out). Not len(context) - eval_count: eval_count counts an end token context has not.
    prompt_count: int = 0
    knowledge: list[dict[str, Any]] = field(default_factory=list)  # FILE chunks put in the prompt: file, chunk, score
    model: str = ""  # the model that generated, as the store names it (set by the runtime)
    stop_sequence: str | None = None  # the stop string that ended it (reason "stop"), if one did

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_eval_count / (self.prompt_eval_duration / 1e9) if self.prompt_eval_duration else 0.0

    @property
    def eval_tokens_per_second(self) -> float:
        return self.eval_count / (self.eval_duration / 1e9) if self.eval_duration else 0.0


Event = Token | Done


@dataclass
class EmbedResult:
    embeddings: list[list[float]]
    prompt_eval_count: int
    load_duration: int = 0
    total_duration: int = 0
