"""Log-probabilities of generated tokens, from the logits the runner sampled them from.

Only requests that ask for them pay: one log-softmax over the vocabulary and a top-k by ``argpartition``
(~0.4 ms, ~0.9 ms with 20 alternatives, per token of SmolLM2's 49k-token vocabulary on a busy 2-core
machine, where one decode step of that model took far longer). The raw logits are used, before penalties,
temperature and truncation, as Ollama (runner/common/logprob.go), llama-server's default ``n_probs`` and
llama-cpp-python report them: at temperature 0 a truncated distribution would put every other token at
-inf and say nothing.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lokal.types import Logprob


def token_logprob(logits: np.ndarray, token: int, num_top: int, piece: Callable[[int], bytes]) -> Logprob:
    """``token``'s log-probability under ``logits`` (one row, the vocabulary) and the ``num_top`` likeliest
    tokens, most likely first (ties by lower id, as greedy sampling picks)."""
    peak = float(logits.max())
    # exp in float32 (all <= 1 after the shift), summed in float64: as exact as all-float64, ~5x faster.
    log_total = peak + float(np.log(np.exp(logits - peak).sum(dtype=np.float64)))
    top: list[Logprob] = []
    if num_top > 0:
        num_top = min(num_top, len(logits))
        ids = np.argpartition(logits, -num_top)[-num_top:]
        ids = ids[np.lexsort((ids, -logits[ids]))]
        top = [_entry(int(i), float(logits[i]) - log_total, piece) for i in ids]
    chosen = _entry(token, float(logits[token]) - log_total, piece)
    chosen.top_logprobs = top
    return chosen


def _entry(token: int, logprob: float, piece: Callable[[int], bytes]) -> Logprob:
    data = piece(token)
    return Logprob(token=data.decode("utf-8", errors="replace"), logprob=logprob, piece=data)
