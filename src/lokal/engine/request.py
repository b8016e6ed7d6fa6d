"""One request's state inside the engine (its tokens, how many are computed, its sampler and its stats), and
a ``Chunk``: the run of a request's tokens that one engine step computes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING, Any

from lokal.engine.detok import Detokenizer
from lokal.types import DoneReason, Logprob, SamplingOptions

if TYPE_CHECKING:
    from lokal.engine.draft import Drafter
    from lokal.engine.kv import PromptLogits
    from lokal.engine.stream import Sink

_request_ids = count(1)


@dataclass(eq=False)
class Request:
    tokens: list[int]  # prompt, then every generated token except an end-of-generation one
    sampling: SamplingOptions
    sink: Sink
    detok: Detokenizer
    sampler: Any  # the runner's handle for this request's C sampler chain; the runner frees it
    drafter: Drafter | None = None  # speculative decoding's guesser; None: one token per step
    needs_exact_step: bool = False  # a guessed step stopped at a close call: compute the next one without guesses
    num_top_logprobs: int | None = None  # None: no log-probabilities; n: each token's and its n likeliest
    num_prompt_tokens: int = 0
    request_id: int = field(default_factory=lambda: next(_request_ids))
    slot: int | None = None
    num_computed: int = 0  # tokens whose KV is in the slot (reused or computed here)
    num_reused: int = 0  # prompt tokens that prefix reuse saved
    # The logits after the whole prompt: from the step that computed its last token, or from the prompt
    # cache (then the prompt was all cached, and the first token is sampled from them with nothing computed).
    prompt_logits: PromptLogits | None = None
    num_generated: int = 0  # sampled tokens, an end-of-generation one included (Ollama's eval_count)
    pending_ids: list[int] = field(default_factory=list)  # generated ids whose text is not out yet
    pending_logprobs: list[Logprob] = field(default_factory=list)  # theirs, when the request asked
    done_reason: DoneReason | None = None  # set when it ends normally
    is_finished: bool = False  # it left the engine: done, cancelled or failed
    is_cancel_requested: bool = False
    submitted_ns: int = field(default_factory=time.perf_counter_ns)
    prompt_eval_ns: int = 0
    eval_ns: int = 0

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.tokens)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < self.num_prompt_tokens

    @property
    def is_first_sample_cached(self) -> bool:
        """The whole prompt came from the cache with its logits, and no token is sampled yet."""
        return self.prompt_logits is not None and self.num_computed == len(self.tokens) == self.num_prompt_tokens

    @property
    def num_prompt_evaluated(self) -> int:
        """Prompt tokens actually computed for this request (Ollama's prompt_eval_count)."""
        return self.num_prompt_tokens - self.num_reused


@dataclass(slots=True)
class Chunk:
    """Tokens ``request.tokens[start:end]`` at positions ``start..end-1`` of the request's slot."""

    request: Request
    start: int
    end: int
    # Speculative decoding: guessed tokens computed after ``end - 1`` in the same decode, at positions
    # ``end..``. The runner keeps the first ``num_accepted`` of them (those the model itself sampled).
    draft: list[int] = field(default_factory=list)
    num_accepted: int = 0
    logprobs: list[Logprob] = field(default_factory=list)  # one per sampled token, when the request asked
    cached_logits: Any = None  # no tokens (start == end): sample from these, the prompt cache's, instead


    @property
    def num_tokens(self) -> int:
        return self.end - self.start + len(self.draft)

    @property
    def needs_sample(self) -> bool:
        """It reaches the request's last known token, whose logits give the next token."""
        return self.end == len(self.request.tokens)

    @property
    def is_prefill(self) -> bool:
        """It computes prompt tokens, or samples the first token from a cached prompt's logits."""
        return self.start < self.request.num_prompt_tokens or self.cached_logits is not None
