"""Drafting for speculative decoding: guessing a request's next tokens, which the engine computes together
with the real next token in one decode, keeping the longest prefix the model itself samples (see
``Runner.decode``). A wrong guess costs only the extra positions in that batch, never a different output.

Two drafters:

* ``PromptLookup`` copies what followed the last earlier occurrence of the sequence's final n-gram (in the
  prompt or the output so far). Rewriting a paragraph, editing code or quoting a document repeats long runs
  of the prompt, and there the guess is right most of the time. Free: no model runs.
* ``DraftModel`` runs a smaller model of the same vocabulary (Modelfile ``DRAFT``) greedily ahead of the
  target. It pays when the draft costs far less per token than the target and mostly agrees with it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol, Sequence

from lokal.errors import LokalError, ModelLoadError

log = logging.getLogger("lokal.engine")

if TYPE_CHECKING:
    from lokal.engine.config import EngineConfig
    from lokal.engine.llamacpp import Runner

NGRAM_SIZES = (3, 2)  # longest first: a longer match predicts better
# Prompt lookup backs off where its guesses fail (ordinary chat repeats little of its prompt): after a draft
# the model refused outright it rests for 1 step, then 2, 4, … up to this many while refusals go on, and
# probes with a single guess; accepted guesses end the back-off, and drafts grow back from there (twice as
# long after each one that held). A guess is not free: on a 2-core CPU a decode of 2 tokens costs ~1.6× one
# of 1, and of 9 tokens ~4.8× (llama.cpp's batched kernels gain little there), so failing guesses slow
# decoding.
MAX_REST_STEPS = 32
# A draft model's guess below this probability (its own) ends the draft: the target would most likely
# refuse it, and each guess costs a draft decode.
DRAFT_MIN_PROBABILITY = 0.5
# Vocabularies of one family may differ by a few padding or added tokens at the end (llama.cpp allows 128).
MAX_VOCAB_SIZE_DIFFERENCE = 128


class Drafter(Protocol):
    def draft(self, tokens: Sequence[int], max_tokens: int) -> list[int]:
        """Up to ``max_tokens`` guesses for what follows ``tokens``; [] when there is no good guess."""
        ...

    def judged(self, num_guessed: int, num_accepted: int) -> None:
        """How the model took the last draft: ``num_accepted`` of its ``num_guessed`` guesses were right."""
        ...


class PromptLookup:
    """One request's n-gram index, updated incrementally as its tokens grow, and its back-off."""

    def __init__(self, sizes: Sequence[int] = NGRAM_SIZES):
        self.sizes = tuple(sizes)
        # size -> n-gram -> the position right after its most recent occurrence that something follows
        self._follows: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self._num_indexed = 0
        self._rest = 0  # steps left without guessing
        self._next_rest = 1  # how long the next refusal rests
        self._length: int | None = None  # most guesses in the next draft; None: as many as allowed

    def draft(self, tokens: Sequence[int], max_tokens: int) -> list[int]:
        end = len(tokens)
        if max_tokens <= 0 or end < 2:
            return []
        if self._rest > 0:
            self._rest -= 1
            return []
        self._index(tokens, end)
        if self._length is not None:
            max_tokens = min(max_tokens, self._length)
        for n in self.sizes:
            if end <= n:
                continue
            follow = self._follows[n].get(tuple(tokens[end - n:end]))
            if follow is not None:
                return list(tokens[follow:follow + max_tokens])
        return []

    def judged(self, num_guessed: int, num_accepted: int) -> None:
        if num_guessed <= 0:
            return
        if num_accepted <= 0:
            self._rest, self._next_rest = self._next_rest, min(2 * self._next_rest, MAX_REST_STEPS)
            self._length = 1  # probe with one guess when the rest is over
            return
        self._next_rest = 1
        # A copied run that held all the way may go on longer: guess twice as far next time. One cut short
        # says how far copying goes here.
        self._length = 2 * num_guessed if num_accepted == num_guessed else num_accepted + 1

    def _index(self, tokens: Sequence[int], end: int) -> None:
        # Every n-gram that ends before the last token, so the final n-gram only finds earlier occurrences.
        for n, follows in self._follows.items():
            for i in range(max(self._num_indexed, n), end):
                follows[tuple(tokens[i - n:i])] = i
        self._num_indexed = end


class DraftModel:
    """A second, smaller model that guesses greedily. One sequence of KV, shared by the engine's requests:
    guesses are made while a single request generates (``Scheduler.draft_max_streams``), and the sequence
    keeps the tokens it last computed, so a request's next guesses cost only its newest tokens.
    Runs on the engine thread, like the target's runner."""

    def __init__(self, path: str, config: EngineConfig, target: Runner):
        from lokal.engine.llamacpp import Runner

        # Its own context: one sequence of the target's context length; the target's batch, threads and
        # KV type. No adapters (they are made for the target) and no prompt cache.
        self._runner = Runner(path, replace(config, num_parallel=1, adapters=(), draft_model="",
                                            prompt_cache_dir="", embedding=False))
        try:
            check_same_vocabulary(self._runner, target)
        except BaseException:
            self._runner.close()
            raise
        self._vocab_limit = target.n_vocab
        self._cached: list[int] = []  # tokens whose KV the draft's sequence holds

    def draft(self, tokens: Sequence[int], max_tokens: int) -> list[int]:
        if max_tokens <= 0 or not tokens:
            return []
        num_cached = _common_prefix(self._cached, tokens)
        try:
            guesses = self._runner.guess(tokens, num_cached, max_tokens, DRAFT_MIN_PROBABILITY, self._vocab_limit)
        except LokalError as exc:  # no guesses is always a correct answer; the target decodes on without
            log.warning("the draft model failed, this step decodes without guesses: %s", exc)
            self._cached = []
            return []
        self._cached = list(tokens) + guesses[:-1]
        return guesses

    def judged(self, num_guessed: int, num_accepted: int) -> None:
        """Nothing to learn: the draft model stops at its own unsure guesses (``DRAFT_MIN_PROBABILITY``), and
        it is shared by every request, so one request's refusals say little about the next's."""

    def close(self) -> None:
        self._runner.close()
        self._cached = []


def check_same_vocabulary(draft: Runner, target: Runner) -> None:
    """The draft's token ids must mean what the target's do. llama.cpp's own rule (common/speculative.cpp):
    the same BOS (when added) and EOS, sizes within ``MAX_VOCAB_SIZE_DIFFERENCE``, and the same text for
    every id both have from 5 on."""
    if (draft.add_bos, draft.eos) != (target.add_bos, target.eos) or (target.add_bos and draft.bos != target.bos):
        raise ModelLoadError(f"the DRAFT model's BOS/EOS tokens ({draft.bos}/{draft.eos}) are not the model's "
                             f"({target.bos}/{target.eos}); a draft model must share the model's vocabulary")
    if abs(draft.n_vocab - target.n_vocab) > MAX_VOCAB_SIZE_DIFFERENCE:
        raise ModelLoadError(f"the DRAFT model has {draft.n_vocab} tokens, the model {target.n_vocab}; a draft "
                             f"model must share the model's vocabulary")
    for token in range(5, min(draft.n_vocab, target.n_vocab)):
        if draft.token_text(token) != target.token_text(token):
            raise ModelLoadError(f"the DRAFT model's token {token} is {draft.token_text(token)!r}, the model's "
                                 f"is {target.token_text(token)!r}; a draft model must share the model's vocabulary")


def _common_prefix(cached: list[int], tokens: Sequence[int]) -> int:
    if len(cached) <= len(tokens) and cached == list(tokens[:len(cached)]):
        return len(cached)  # the usual case: the request went on from where the draft left it
    n = min(len(cached), len(tokens))
    for i in range(n):
        if cached[i] != tokens[i]:
            return i
    return n
