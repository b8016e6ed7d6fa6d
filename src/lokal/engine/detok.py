"""Incremental detokenizing: token pieces in, complete UTF-8 text out, stop strings cut.

Pure Python: the piece function (token id → bytes) comes from the runner, so this is testable without
a model. Two things are held back until they are decided:

- bytes of a character split across tokens (emoji, CJK, …): only complete characters are emitted;
- text that could be the start of a stop string: emitted once it cannot be, never once it is.
"""

from __future__ import annotations

import codecs
from typing import Callable, Sequence


class Detokenizer:
    """One request's output text. ``add(token)`` returns the text that became final with that token."""

    def __init__(self, piece: Callable[[int], bytes], stop: Sequence[str] = (), *,
                 strip_leading_space: bool = False):
        self._piece = piece
        self._stops = [s for s in stop if s]
        # "errors=replace": a model may emit bytes that never form valid UTF-8; show U+FFFD, never raise.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # SentencePiece vocabularies mark word starts with a space; decoding a text from its very first
        # token drops that one space (as llama_detokenize does). A continuation keeps it.
        self._must_strip_space = strip_leading_space
        self._held = ""  # decoded text that might still turn into a stop string
        self.is_stopped = False
        self.matched_stop: str | None = None  # the stop string that ended the text

    def add(self, token: int) -> str:
        if self.is_stopped:
            return ""
        piece = self._piece(token)
        if self._must_strip_space and piece:
            piece = piece[1:] if piece.startswith(b" ") else piece
            self._must_strip_space = False
        return self._release(self._held + self._utf8.decode(piece))

    def flush(self) -> str:
        """The rest at the end of generation: held text (no stop can complete now), a cut-off character as U+FFFD."""
        if self.is_stopped:
            return ""
        text = self._held + self._utf8.decode(b"", final=True)
        self._held = ""
        return text

    def _release(self, text: str) -> str:
        if not self._stops:
            return text
        cut, stop = min(((i, s) for s, i in ((s, text.find(s)) for s in self._stops) if i >= 0),
                        default=(-1, None))
        if cut >= 0:
            self.is_stopped = True
            self.matched_stop = stop
            self._held = ""
            return text[:cut]
        num_held = _longest_stop_prefix_suffix(text, self._stops)
        self._held = text[len(text) - num_held:] if num_held else ""
        return text[:len(text) - num_held]


def _longest_stop_prefix_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the beginning of some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
