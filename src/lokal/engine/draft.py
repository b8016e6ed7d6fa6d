"""Prompt-lookup drafting for speculative decoding: guess the next tokens by copying what followed the last
earlier occurrence of the sequence's final n-gram (in the prompt or the output so far).

Rewriting a paragraph, editing code or quoting a document repeats long runs of the prompt, and there the
guess is right most of the time. The engine computes the guesses together with the real next token in one
decode and keeps the longest prefix the model agrees with (see ``Runner.decode``), so a wrong guess costs
only the extra positions in that batch, never a different output.
"""

from __future__ import annotations

from typing import Sequence

NGRAM_SIZES = (3, 2)  # longest first: a longer match predicts better


class PromptLookup:
    """One request's n-gram index, updated incrementally as its tokens grow."""

    def __init__(self, sizes: Sequence[int] = NGRAM_SIZES):
        self.sizes = tuple(sizes)
        # size -> n-gram -> the position right after its most recent occurrence that something follows
        self._follows: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self._num_indexed = 0

    def draft(self, tokens: Sequence[int], max_tokens: int) -> list[int]:
        """Up to ``max_tokens`` guesses for what follows ``tokens``; [] when no n-gram recurs."""
        end = len(tokens)
        if max_tokens <= 0 or end < 2:
            return []
        self._index(tokens, end)
        for n in self.sizes:
            if end <= n:
                continue
            follow = self._follows[n].get(tuple(tokens[end - n:end]))
            if follow is not None:
                return list(tokens[follow:follow + max_tokens])
        return []

    def _index(self, tokens: Sequence[int], end: int) -> None:
        # Every n-gram that ends before the last token, so the final n-gram only finds earlier occurrences.
        for n, follows in self._follows.items():
            for i in range(max(self._num_indexed, n), end):
                follows[tuple(tokens[i - n:i])] = i
        self._num_indexed = end
