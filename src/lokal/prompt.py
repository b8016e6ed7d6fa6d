"""From a ``GenerateRequest`` to prompt tokens: templating, the model's defaults, and fitting the context.

**BOS rule.** Rendered text is tokenized with ``add_special=True, parse_special=True``: the tokenizer adds
BOS exactly when the model's metadata asks for it (Go templates and ChatML never write it, as in Ollama),
and special-token text such as ``<|im_start|>`` becomes its token. Jinja templates are rendered with the
model's real ``bos_token`` text because HF templates such as Gemma's write ``{{ bos_token }}`` themselves;
when that meets the tokenizer's own BOS, the doubled leading BOS is collapsed to one. The model's BOS is
learned by tokenizing the empty string with ``add_special=True``.

**Context rule** (Ollama's semantics). A prompt fits when ``len(tokens) + reserve <= num_ctx``, where the
reserve kept free for the reply is ``min(num_predict, num_ctx // 4)`` for a bounded ``num_predict`` and
``min(DEFAULT_OUTPUT_RESERVE, num_ctx // 4)`` otherwise. When it does not fit:

* chat, ``truncate=True``: the oldest messages are dropped, whole turns at a time (a kept prefix always
  starts at a user message), keeping every system message and everything from the latest user message on;
  if even that does not fit, ``ContextOverflow``.
* generate, ``truncate=True``: the Modelfile's MESSAGES are dropped first, as in chat; then the prompt's
  last tokens are kept (and BOS).
* ``truncate=False``: ``ContextOverflow`` with the token counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from lokal.errors import BadRequest, ContextOverflow, UnsupportedCapability
from lokal.templates import ChatTemplate, MessageLike, as_message_dict
from lokal.types import GenerateRequest, Think

DEFAULT_OUTPUT_RESERVE = 64  # tokens kept free for the reply when num_predict is unbounded (-1, -2)


class Tokenize(Protocol):
    """The engine's tokenizer (``Engine.tokenize``)."""

    def __call__(self, text: str, add_special: bool, parse_special: bool) -> list[int]: ...


@dataclass(frozen=True)
class Prompt:
    """What the engine runs. ``text`` is the rendered text before any token-level truncation (for
    ``context`` requests, only the new part); ``tokens`` are authoritative."""

    tokens: list[int]
    text: str
    num_dropped_messages: int = 0


def output_reserve(num_ctx: int, num_predict: int) -> int:
    wanted = num_predict if num_predict > 0 else DEFAULT_OUTPUT_RESERVE
    return min(wanted, num_ctx // 4)


class _Tokenizer:
    """Applies the BOS rule on top of the engine's tokenizer."""

    def __init__(self, tokenize: Tokenize):
        self._tokenize = tokenize
        automatic = tokenize("", add_special=True, parse_special=False)
        self.bos_id: int | None = automatic[0] if automatic else None

    def __call__(self, text: str) -> list[int]:
        tokens = self._tokenize(text, add_special=True, parse_special=True)
        if self.bos_id is not None and tokens[:2] == [self.bos_id, self.bos_id]:
            del tokens[0]
        return tokens

    def without_bos(self, tokens: list[int]) -> list[int]:
        return tokens[1:] if self.bos_id is not None and tokens[:1] == [self.bos_id] else tokens


@dataclass(frozen=True)
class _Budget:
    num_ctx: int
    reserve: int

    @property
    def num_tokens(self) -> int:
        return self.num_ctx - self.reserve

    def overflow(self, num_tokens: int, detail: str = "") -> ContextOverflow:
        return ContextOverflow(
            f"the prompt is {num_tokens} tokens{detail}, but the context holds {self.num_ctx} tokens and "
            f"{self.reserve} are kept for the reply, so at most {self.num_tokens} fit; shorten the input or "
            f"raise num_ctx")


def build_prompt(request: GenerateRequest, *, template: ChatTemplate, tokenize: Tokenize, num_ctx: int,
                 num_predict: int = -1, default_system: str | None = None,
                 default_messages: Sequence[MessageLike] = (), bos_token: str = "",
                 eos_token: str = "") -> Prompt:
    """The prompt for ``request`` on a model with this template, Modelfile SYSTEM (``default_system``) and
    MESSAGES (``default_messages``). A request ``template`` replaces the model's (Go syntax)."""
    if num_ctx < 1:
        raise BadRequest("num_ctx must be positive")
    budget = _Budget(num_ctx, output_reserve(num_ctx, num_predict))
    tokenizer = _Tokenizer(tokenize)
    if request.template and not request.raw:
        template = ChatTemplate.from_model(None, request.template)
    tools = request.tools if request.tool_choice != "none" else None
    if tools and not template.supports_tools:
        raise UnsupportedCapability("this model's template does not support tools")
    if request.think and not template.supports_thinking:
        raise UnsupportedCapability("this model does not support thinking")
    render = _Renderer(template, tokenizer, tools, bos_token, eos_token, request.think)
    if request.messages is not None:
        has_system = any(as_message_dict(m)["role"] == "system" for m in request.messages)
        messages = _system(None if has_system else default_system) + list(default_messages) + list(request.messages)
        return _fit_messages(messages, render, budget, request.truncate, must_fit=True)
    if request.prompt is None:
        raise BadRequest("the request has neither a prompt nor messages")
    if request.raw:
        if request.template or request.system or request.context:
            raise BadRequest("raw mode does not support template, system, or context")
        return _fit_tail(Prompt(tokenizer(request.prompt), request.prompt), tokenizer, budget, request.truncate)
    return _generate_prompt(request, request.prompt, render, tokenizer, budget, default_system, default_messages)


def _system(text: str | None) -> list[MessageLike]:
    return [{"role": "system", "content": text}] if text else []


@dataclass(frozen=True)
class _Renderer:
    template: ChatTemplate
    tokenizer: _Tokenizer
    tools: list[dict] | None
    bos_token: str
    eos_token: str
    think: Think = None

    def __call__(self, messages: Sequence[MessageLike]) -> Prompt:
        text = self.template.render(messages, tools=self.tools, bos_token=self.bos_token, eos_token=self.eos_token,
                                    think=self.think)
        return Prompt(self.tokenizer(text), text)


def _generate_prompt(request: GenerateRequest, user_prompt: str, render: _Renderer, tokenizer: _Tokenizer,
                     budget: _Budget, default_system: str | None,
                     default_messages: Sequence[MessageLike]) -> Prompt:
    if request.suffix:
        text = render.template.render_generate(user_prompt, suffix=request.suffix)
        prompt = Prompt(tokenizer(text), text)
    else:
        # As Ollama: the Modelfile's MESSAGES are left out when the client carries its own context.
        history = [] if request.context else list(default_messages)
        messages = _system(request.system or default_system) + history + [{"role": "user", "content": user_prompt}]
        prompt = _fit_messages(messages, render, budget, request.truncate, must_fit=False)
    if request.context:
        tokens = list(request.context) + tokenizer.without_bos(prompt.tokens)
        prompt = Prompt(tokens, prompt.text, prompt.num_dropped_messages)
    return _fit_tail(prompt, tokenizer, budget, request.truncate)


def _fit_tail(prompt: Prompt, tokenizer: _Tokenizer, budget: _Budget, truncate: bool) -> Prompt:
    """Keep the last tokens that fit (and the leading BOS), or refuse when truncation is off."""
    if len(prompt.tokens) <= budget.num_tokens:
        return prompt
    if not truncate:
        raise budget.overflow(len(prompt.tokens))
    head = prompt.tokens[:1] if tokenizer.bos_id is not None and prompt.tokens[:1] == [tokenizer.bos_id] else []
    tail = prompt.tokens[len(prompt.tokens) - (budget.num_tokens - len(head)):]
    return Prompt(head + tail, prompt.text, prompt.num_dropped_messages)


def _fit_messages(messages: list[MessageLike], render: _Renderer, budget: _Budget, truncate: bool, *,
                  must_fit: bool) -> Prompt:
    """Render the chat; when it is too long, drop the fewest oldest turns that make it fit.

    A kept suffix starts at a user message (templates such as Gemma's insist on user/assistant alternation),
    never later than the latest user message; system messages before it are kept. With ``must_fit`` False
    the shortest candidate is returned even when it is still too long (the caller truncates tokens)."""
    full = render(messages)
    if len(full.tokens) <= budget.num_tokens:
        return full
    if not truncate:
        if must_fit:
            raise budget.overflow(len(full.tokens))
        return full
    roles = [as_message_dict(m)["role"] for m in messages]
    # Candidate first kept messages: user messages with something droppable before them.
    starts = [i for i, role in enumerate(roles) if role == "user" and any(r != "system" for r in roles[:i])]
    if not starts:
        if must_fit:
            raise budget.overflow(len(full.tokens), " and no older messages can be dropped")
        return full
    rendered: dict[int, Prompt] = {}

    def attempt(start: int) -> Prompt:
        if start not in rendered:
            kept = [m for i, m in enumerate(messages[:start]) if roles[i] == "system"] + messages[start:]
            prompt = render(kept)
            num_dropped = sum(1 for role in roles[:start] if role != "system")
            rendered[start] = Prompt(prompt.tokens, prompt.text, num_dropped)
        return rendered[start]

    shortest = attempt(starts[-1])
    if len(shortest.tokens) > budget.num_tokens:
        if must_fit:
            raise budget.overflow(len(shortest.tokens), f" even after dropping {shortest.num_dropped_messages} "
                                                        "older messages")
        return shortest
    # Fewer kept messages never means more tokens, so the earliest start that fits is found by bisection:
    # log(n) renders instead of n for a long chat.
    low, high = 0, len(starts) - 1  # starts[high] fits
    while low < high:
        middle = (low + high) // 2
        if len(attempt(starts[middle]).tokens) <= budget.num_tokens:
            high = middle
        else:
            low = middle + 1
    return attempt(starts[high])
