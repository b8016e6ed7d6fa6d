"""Splitting a model's generated text into what each API reports apart: the reasoning between
``<think>`` and ``</think>`` (``thinking``), tool calls (``tool_calls.py``), and the content left over.

Works on the stream: markers split across tokens are held back until they are whole, so no API ever
shows a raw ``<think>`` or ``<tool_call>`` fragment, and text that cannot be a marker is passed on at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

from lokal.templates import ChatTemplate
from lokal.tool_calls import ToolCallParser, partial_suffix
from lokal.types import Done, Event, GenerateRequest, Logprob, Token

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class ThinkSplitter:
    """Reasoning first (``<think>…</think>``, or from the start when the prompt opened it), then content."""

    in_thinking: bool = False
    _held: str = ""
    _may_open: bool = True  # only leading text may open a think block
    _after_close: bool = False  # the whitespace right after </think> is not content

    def feed(self, text: str) -> tuple[str, str]:
        """(thinking, content) safe to show after ``text``."""
        self._held += text
        thinking: list[str] = []
        content: list[str] = []
        while self._held:
            if self.in_thinking:
                end = self._held.find(THINK_CLOSE)
                if end >= 0:
                    thinking.append(self._held[:end])
                    self._held = self._held[end + len(THINK_CLOSE):]
                    self.in_thinking = self._may_open = False
                    self._after_close = True
                    continue
                keep = partial_suffix(self._held, THINK_CLOSE)
                thinking.append(self._held[: len(self._held) - keep])
                self._held = self._held[len(self._held) - keep:]
                break
            if self._may_open:
                stripped = self._held.lstrip()
                if stripped.startswith(THINK_OPEN):
                    self._held = stripped[len(THINK_OPEN):]
                    self.in_thinking, self._may_open = True, False
                    continue
                if not stripped or THINK_OPEN.startswith(stripped):
                    break  # still could be the opening tag
                self._may_open = False
            if self._after_close:
                self._held = self._held.lstrip()
                if not self._held:
                    break
                self._after_close = False
            content.append(self._held)
            self._held = ""
        return "".join(thinking), "".join(content)

    def finish(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        return (held, "") if self.in_thinking else ("", held)


@dataclass
class OutputSplitter:
    """Splits each token's text; log-probabilities of tokens whose text is held back (a marker that may be
    forming) wait and go out with the next piece of output, as their ids do."""

    think: ThinkSplitter | None = None
    tools: ToolCallParser | None = None
    _num_calls: int = field(default=0)
    _held_ids: list[int] = field(default_factory=list)
    _held_logprobs: list[Logprob] | None = None

    def feed(self, token: Token) -> Token:
        self._hold(token)
        thinking, content = self.think.feed(token.text) if self.think else ("", token.text)
        return self._token(thinking, self.tools.feed(content) if self.tools else content)

    def finish(self) -> Token:
        thinking, content = self.think.finish() if self.think else ("", "")
        if self.tools:
            content = self.tools.feed(content) + self.tools.finish()
        return self._token(thinking, content)

    def _hold(self, token: Token) -> None:
        self._held_ids += token.ids
        if token.logprobs is not None:
            self._held_logprobs = (self._held_logprobs or []) + token.logprobs

    def _token(self, thinking: str, content: str) -> Token:
        calls = None
        if self.tools and len(self.tools.calls) > self._num_calls:
            calls = self.tools.calls[self._num_calls:]
            self._num_calls = len(self.tools.calls)
        token = Token(text=content, ids=self._held_ids, thinking=thinking, tool_calls=calls,
                      logprobs=self._held_logprobs)
        if not is_empty(token):
            self._held_ids = []
            self._held_logprobs = [] if self._held_logprobs is not None else None
        return token


def is_empty(token: Token) -> bool:
    return not token.text and not token.thinking and not token.tool_calls


async def split_events(events: AsyncIterator[Event], splitter: OutputSplitter) -> AsyncIterator[Event]:
    """The runtime's events with each token's text split; what was held back comes out before Done."""
    async for event in events:
        if isinstance(event, Done):
            rest = splitter.finish()
            if not is_empty(rest):
                yield rest
            yield event
            return
        token = splitter.feed(event)
        if not is_empty(token):
            yield token


def output_splitter(request: GenerateRequest, template: ChatTemplate, prompt_text: str,
                    forced: bool) -> OutputSplitter | None:
    """How this request's output is split into thinking, tool calls and content; None: all content."""
    if request.raw:
        return None
    think = None
    if template.supports_thinking and request.think is not False:
        # The prompt may open the think block itself (a template that writes "<think>" for the reply).
        think = ThinkSplitter(in_thinking=prompt_text.rstrip().endswith(THINK_OPEN))
    tools = None
    if request.tools and request.tool_choice != "none":
        tools = ToolCallParser(template.tool_format, forced=forced)
    return OutputSplitter(think, tools) if think or tools else None
