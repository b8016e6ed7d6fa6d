"""Chat templates: a model's GGUF Jinja template, or an Ollama Go-template override.

Three flavours, chosen once per model by ``ChatTemplate.from_model``:

* **go** — a Modelfile ``TEMPLATE`` (or a request's ``template``) in the subset of Go's text/template that
  Ollama templates use. Rendered with Ollama's rules (see ``render_go_chat``).
* **jinja** — the GGUF's ``tokenizer.chat_template`` (Hugging Face style), rendered in Jinja2's immutable
  sandbox with the globals HF provides.
* **fallback** — the model has neither: ChatML (``<|im_start|>role\\ncontent<|im_end|>\\n`` … then
  ``<|im_start|>assistant\\n``), or Gemma's turn format for Gemma architectures, whose GGUFs often lack a
  template and which do not understand ChatML.

Templates are compiled once per source string (LRU cache); a malformed template or a template that calls
``raise_exception`` is a ``BadRequest``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal, Mapping, Sequence, Union

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lokal.errors import BadRequest, LokalError, UnsupportedCapability
from lokal.gotemplate import parse_go
from lokal.tool_calls import ToolFormat, detect_format
from lokal.tool_templates import builtin_tools_template
from lokal.types import Message, Think

log = logging.getLogger(__name__)

MessageLike = Union[Message, Mapping[str, Any]]


def as_message_dict(message: MessageLike) -> dict[str, Any]:
    """A message as HF templates see it: ``role``, ``content`` and, where present, ``tool_calls``, ``name``
    (the tool's name on a tool result) and ``thinking``."""
    if isinstance(message, Message):
        raw: dict[str, Any] = {"role": message.role, "content": message.content, "tool_calls": message.tool_calls,
                               "name": message.tool_name, "thinking": message.thinking}
    elif isinstance(message, Mapping):
        raw = dict(message)
        raw.setdefault("name", raw.pop("tool_name", None))
    else:
        raise BadRequest(f"a message must be an object with role and content, got {type(message).__name__}")
    role, content = raw.get("role"), raw.get("content")
    if not isinstance(role, str) or not role:
        raise BadRequest("every message needs a role (system, user, assistant or tool)")
    if content is None:
        raw["content"] = ""
    elif not isinstance(content, str):
        raise BadRequest(f"message content must be a string, got {type(content).__name__}")
    # Absent rather than None, so that `message.tool_calls is defined` style tests in templates hold.
    return {key: value for key, value in raw.items() if value is not None}


# ================================================================================= Jinja (GGUF templates)

def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # HF's tojson: unlike Jinja's own filter it does not HTML-escape, and keeps non-ASCII text as is.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise BadRequest(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` marks trainable spans in HF templates; it renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


@lru_cache(maxsize=1)
def _jinja_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, _GenerationBlock])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=64)
def _compile_jinja(source: str) -> jinja2.Template:
    try:
        return _jinja_environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise BadRequest(f"chat template does not compile: {exc.message} (line {exc.lineno})") from None


def render_jinja(template: str, messages: Sequence[MessageLike], *, tools: list[dict[str, Any]] | None = None,
                 add_generation_prompt: bool = True, bos_token: str = "", eos_token: str = "",
                 **extra: Any) -> str:
    """Render an HF-style chat template as ``tokenizer.apply_chat_template`` would."""
    compiled = _compile_jinja(template)
    try:
        return compiled.render(messages=[as_message_dict(m) for m in messages], tools=tools or None,
                               add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                               eos_token=eos_token, **extra)
    except LokalError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise BadRequest(f"chat template failed: {exc}") from None


# ================================================================================= Ollama's rendering rules

def _go_message(message: dict[str, Any]) -> dict[str, Any]:
    return {"Role": message["role"], "Content": message["content"], "ToolCalls": message.get("tool_calls"),
            "ToolName": message.get("name"), "Thinking": message.get("thinking"), "Images": None}


def _root(**values: Any) -> dict[str, Any]:
    return {"System": "", "Prompt": "", "Response": "", "Suffix": "", "Messages": None, "Tools": None,
            "Think": False, "IsThinkSet": False, **values}


def render_go(template: str, *, system: str = "", prompt: str = "", response: str = "",
              messages: Sequence[MessageLike] | None = None, suffix: str = "",
              tools: list[dict[str, Any]] | None = None) -> str:
    """Execute an Ollama template once with the given values (no turn-by-turn logic; see ``render_go_chat``)."""
    go_messages = None if messages is None else [_go_message(as_message_dict(m)) for m in messages]
    return parse_go(template).execute(_root(System=system, Prompt=prompt, Response=response, Suffix=suffix,
                                            Messages=go_messages, Tools=tools or None))


def _collate(messages: Sequence[MessageLike]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's collate: all system texts joined, and consecutive same-role messages merged (tool results
    stay separate)."""
    system: list[str] = []
    collated: list[dict[str, Any]] = []
    for message in map(as_message_dict, messages):
        if message["role"] == "system":
            system.append(message["content"])
        if collated and collated[-1]["role"] == message["role"] and message["role"] != "tool":
            collated[-1] = {**collated[-1], "content": collated[-1]["content"] + "\n\n" + message["content"]}
        else:
            collated.append(message)
    return "\n\n".join(system), collated


def _think_values(think: Think) -> dict[str, Any]:
    if think is None:
        return {}
    level = think if isinstance(think, str) else ""
    return {"Think": bool(think), "IsThinkSet": True, "ThinkLevel": level}


def render_go_chat(template: str, messages: Sequence[MessageLike],
                   tools: list[dict[str, Any]] | None = None, think: Think = None) -> str:
    """A chat through an Ollama template, as Ollama's ``template.Execute`` renders it.

    A template that uses ``.Messages`` is executed once with the whole (collated) chat. Otherwise it is
    executed once per turn: system and user texts gather until an assistant reply, which fills ``.Response``
    and closes the turn; the last turn is rendered only up to ``{{ .Response }}`` (with a trailing assistant
    message, its text is the start of the reply to continue).
    """
    parsed = parse_go(template)
    system, collated = _collate(messages)
    if parsed.uses_messages:
        return parsed.execute(_root(System=system, Messages=[_go_message(m) for m in collated],
                                    Tools=tools or None, **_think_values(think)))
    parts: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        parts.append(parsed.execute(_root(**turn, **_think_values(think))))
        turn.update(System="", Prompt="", Response="")

    for message in collated:
        if message["role"] == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = message["content"]
        elif message["role"] == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = message["content"]
        elif message["role"] == "assistant":
            turn["Response"] = message["content"]
    parts.append(parsed.execute(_root(**turn, **_think_values(think)), until_response=True))
    return "".join(parts)


# ================================================================================= ChatTemplate


def _has_tool_turns(messages: Sequence[MessageLike]) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in map(as_message_dict, messages))


# Written for lokal (not copied from a model): what a model without a template is prompted with.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Gemma has no system role: system texts open the first user turn, and the assistant is "model".
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set state = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set state.system = state.system + (message['content'] | trim) + '\\n\\n' %}"
    "{% else %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{% if message['role'] == 'user' %}{{ state.system }}{% set state.system = '' %}{% endif %}"
    "{{ (message['content'] | trim) + '<end_of_turn>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
_FALLBACK_BY_ARCHITECTURE = {"gemma": GEMMA_TEMPLATE, "gemma2": GEMMA_TEMPLATE, "gemma3": GEMMA_TEMPLATE,
                             "gemma3n": GEMMA_TEMPLATE}
_MENTIONS_TOOLS = re.compile(r"\btools\b")
_MENTIONS_THINKING = re.compile(r"<think>|\benable_thinking\b")

TemplateKind = Literal["go", "jinja", "fallback"]


@dataclass(frozen=True)
class ChatTemplate:
    """How one model turns messages into prompt text. Build it with ``from_model``."""

    source: str
    kind: TemplateKind
    # What requests with tools (or tool messages) render with: the template itself when it handles tools,
    # else a built-in one for its family (tool_templates.py), else None (no tools for this model).
    tools_source: str | None = None
    tool_format: ToolFormat | None = None

    @classmethod
    def from_model(cls, gguf_chat_template: str | None, override: str | None = None, *,
                   architecture: str | None = None) -> ChatTemplate:
        """The override (a Modelfile TEMPLATE or a request's ``template``, Go syntax) wins; else the GGUF's
        Jinja template; else the fallback for ``architecture`` (ChatML unless Gemma).

        A malformed override is a ``BadRequest``; a GGUF template that does not compile falls back, with a
        warning, so that the model stays usable."""
        if override and override.strip():
            parse_go(override)
            return cls(override, "go")._with_tools(architecture)
        if gguf_chat_template and gguf_chat_template.strip():
            try:
                _compile_jinja(gguf_chat_template)
                return cls(gguf_chat_template, "jinja")._with_tools(architecture)
            except BadRequest as exc:
                log.warning("model's chat template is unusable, using a fallback: %s", exc.message)
        fallback = _FALLBACK_BY_ARCHITECTURE.get((architecture or "").lower(), CHATML_TEMPLATE)
        return cls(fallback, "fallback")._with_tools(architecture)

    def _with_tools(self, architecture: str | None) -> ChatTemplate:
        if self.mentions_tools:
            return replace(self, tools_source=self.source, tool_format=detect_format(self.source) or "hermes")
        if self.kind == "go":  # a Modelfile TEMPLATE without tools is the author's choice: no tools
            return self
        builtin = builtin_tools_template(self.source, architecture)
        if builtin is None:
            return self
        return replace(self, tools_source=builtin[0], tool_format=builtin[1])

    @property
    def supports_tools(self) -> bool:
        """Ollama's "tools" capability: requests with tools render through a template that shows them."""
        return self.tools_source is not None

    @property
    def supports_thinking(self) -> bool:
        """Ollama's "thinking" capability: the template switches thinking (``.Think``, ``enable_thinking``)
        or writes ``<think>`` itself."""
        if self.kind == "go":
            return "think" in parse_go(self.source).vars or "<think>" in self.source
        return bool(_MENTIONS_THINKING.search(self.source))

    @property
    def mentions_tools(self) -> bool:
        """Whether the template renders tool definitions (Ollama's "tools" capability)."""
        if self.kind == "go":
            return "tools" in parse_go(self.source).vars
        return self.kind == "jinja" and bool(_MENTIONS_TOOLS.search(self.source))

    @property
    def supports_suffix(self) -> bool:
        """Whether the template renders a ``.Suffix`` (fill-in-the-middle, Ollama's "insert" capability)."""
        return self.kind == "go" and "suffix" in parse_go(self.source).vars

    def render(self, messages: Sequence[MessageLike], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, bos_token: str = "", eos_token: str = "",
               think: Think = None) -> str:
        """A chat as prompt text. Go templates always end ready for the reply, as Ollama's do, so
        ``add_generation_prompt`` only applies to Jinja templates; Go templates never see the BOS text.
        A chat with tools or tool turns renders through ``tools_source``."""
        if self.kind == "go":
            return render_go_chat(self.source, messages, tools, think)
        source = self.source
        if self.tools_source and (tools or _has_tool_turns(messages)):
            source = self.tools_source
        extra: dict[str, Any] = {}
        if think is not None:
            extra["enable_thinking"] = bool(think)
            if isinstance(think, str):
                extra["reasoning_effort"] = think
        return render_jinja(source, messages, tools=tools, add_generation_prompt=add_generation_prompt,
                            bos_token=bos_token, eos_token=eos_token, **extra)

    def render_generate(self, prompt: str, system: str | None = None, suffix: str | None = None,
                        bos_token: str = "", eos_token: str = "") -> str:
        """/api/generate's templating: the system text and the prompt as one user turn; with a suffix, the
        Go template's ``.Prompt`` and ``.Suffix`` directly (fill-in-the-middle)."""
        if suffix:
            if not self.supports_suffix:
                raise UnsupportedCapability("this model's template does not support insert (suffix)")
            return render_go(self.source, prompt=prompt, suffix=suffix)
        messages: list[MessageLike] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        return self.render(messages, bos_token=bos_token, eos_token=eos_token)
