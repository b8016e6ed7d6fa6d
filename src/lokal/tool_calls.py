"""Tool calls in a model's output: which format a chat template teaches, how to read calls out of the
generated text (streamed or whole), and the JSON schema that forces a call when ``tool_choice`` demands one.

Formats (what the model writes to call a tool):

* ``hermes`` — ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``, one block per call (ChatML models:
  SmolLM2, Qwen, Hermes; lokal's built-in Gemma tools template uses the same tags).
* ``llama3`` — the whole reply is ``{"name": …, "parameters": {…}}`` (several separated by ``;``),
  optionally after ``<|python_tag|>``.
* ``mistral`` — ``[TOOL_CALLS]`` then a JSON array of ``{"name", "arguments"}``.

A forced call (``tool_choice`` required or a named function) is generated under a grammar from
``forced_call_schema``: the whole reply is then one bare JSON call object, whatever the format.

Calls come out in Ollama's internal shape ``{"function": {"name", "arguments": {…}}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from lokal.errors import BadRequest

ToolFormat = Literal["hermes", "llama3", "mistral"]
ToolCall = dict[str, Any]

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_OPEN = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"


def detect_format(template_source: str) -> ToolFormat | None:
    """The tool-call format a template's markers imply, or None when it shows none."""
    if HERMES_OPEN in template_source or "<|im_start|>" in template_source:
        return "hermes"
    if MISTRAL_OPEN in template_source or "[INST]" in template_source:
        return "mistral"
    if "<|start_header_id|>" in template_source or PYTHON_TAG in template_source:
        return "llama3"
    if "<start_of_turn>" in template_source:
        return "hermes"
    return None


# ---- tool_choice -----------------------------------------------------------------------------------------

ToolChoice = Literal["auto", "none", "required"] | str | None  # a str other than those: a function name


def function_of(tool: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict) or not tool["function"].get("name"):
        raise BadRequest('every tool must be {"type": "function", "function": {"name": …, "parameters": {…}}}')
    return tool["function"]


def forced_call_schema(tools: list[dict[str, Any]], choice: ToolChoice) -> dict[str, Any] | None:
    """The JSON schema of one call the reply must be, for ``required`` or a named function; None otherwise."""
    if choice in (None, "auto", "none"):
        return None
    functions = [function_of(tool) for tool in tools]
    if choice != "required":
        functions = [f for f in functions if f["name"] == choice]
        if not functions:
            raise BadRequest(f"tool_choice names {choice!r}, which is not among the tools")
    options = [_call_schema(f) for f in functions]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise BadRequest(f"the parameters of tool {function['name']!r} must be a JSON schema object")
    return {"type": "object", "properties": {"name": {"const": function["name"]}, "arguments": parameters},
            "required": ["name", "arguments"]}


# ---- reading calls from text -----------------------------------------------------------------------------


def as_call(value: Any) -> ToolCall | None:
    """``{"name", "arguments" | "parameters"}`` (arguments as an object or a JSON string) → a call."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    if isinstance(value.get("function"), dict):  # already {"function": {...}}
        return as_call(value["function"])
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"function": {"name": value["name"], "arguments": arguments}}


def parse_calls(text: str) -> list[ToolCall] | None:
    """Calls in a JSON text: one object, an array of them, or objects separated by ``;`` (Llama 3)."""
    text = text.strip()
    if not text:
        return None
    candidates: list[Any] = []
    try:
        parsed = json.loads(text)
        candidates = parsed if isinstance(parsed, list) else [parsed]
    except json.JSONDecodeError:
        try:
            candidates = [json.loads(part) for part in text.split(";") if part.strip()]
        except json.JSONDecodeError:
            return None
    calls = [as_call(candidate) for candidate in candidates]
    if not calls or any(call is None for call in calls):
        return None
    return calls  # type: ignore[return-value]


@dataclass
class ToolCallParser:
    """Splits streamed text into content and tool calls. ``feed`` returns the content that is safe to show
    now (text that might still become a call is held back); ``finish`` returns the rest and every call."""

    format: ToolFormat | None
    forced: bool = False
    calls: list[ToolCall] = field(default_factory=list)
    _held: str = ""
    _in_call: bool = False
    _started: bool = False  # whether any non-space text has been seen (llama3 / mistral decide there)
    _whole: bool = False  # the rest of the reply is a call (forced, llama3 JSON, mistral array)

    def feed(self, text: str) -> str:
        if self._whole:
            self._held += text
            return ""
        if self.forced:
            self._whole = True
            self._held += text
            return ""
        if self.format == "hermes":
            return self._feed_tags(text)
        if self.format in ("llama3", "mistral"):
            return self._feed_leading(text)
        return text

    def finish(self) -> str:
        held, self._held = self._held, ""
        if self._whole:
            payload = held.strip()
            payload = payload.removeprefix(MISTRAL_OPEN).removeprefix(PYTHON_TAG)
            calls = parse_calls(payload)
            if calls is None:
                return held
            self.calls.extend(calls)
            return ""
        if self._in_call:
            calls = parse_calls(held.removesuffix(HERMES_CLOSE[: len(held)]))
            if calls is None:  # an unfinished call that does not parse: shown as text, without the markup
                return held
            self.calls.extend(calls)
            return ""
        return held

    def _feed_tags(self, text: str) -> str:
        self._held += text
        shown: list[str] = []
        while True:
            if self._in_call:
                end = self._held.find(HERMES_CLOSE)
                if end < 0:
                    break
                payload, self._held = self._held[:end], self._held[end + len(HERMES_CLOSE):]
                self._in_call = False
                calls = parse_calls(payload)
                if calls is None:
                    shown.append(payload)
                else:
                    self.calls.extend(calls)
                continue
            start = self._held.find(HERMES_OPEN)
            if start >= 0:
                shown.append(self._held[:start])
                self._held = self._held[start + len(HERMES_OPEN):]
                self._in_call = True
                continue
            keep = partial_suffix(self._held, HERMES_OPEN)
            shown.append(self._held[: len(self._held) - keep])
            self._held = self._held[len(self._held) - keep:]
            break
        return "".join(shown)

    def _feed_leading(self, text: str) -> str:
        if self._started:
            return text
        self._held += text
        stripped = self._held.lstrip()
        if not stripped:
            return ""
        markers = (MISTRAL_OPEN,) if self.format == "mistral" else ("{", PYTHON_TAG)
        if any(stripped.startswith(m) for m in markers):
            self._whole = True
            return ""
        if any(m.startswith(stripped) for m in markers):
            return ""  # could still become a marker
        self._started = True
        held, self._held = self._held, ""
        return held


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0
