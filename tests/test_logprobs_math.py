"""engine/logprobs.py on hand-made logits, against log-softmax written out with the math module."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lokal.engine.logprobs import token_logprob

PIECES = {0: b"a", 1: b"\xe6\x9d", 2: b"c", 3: b"d"}


def test_log_softmax_top_k_and_ties():
    logits = np.array([1.0, 3.0, 3.0, -2.0], dtype=np.float32)
    log_total = math.log(sum(math.exp(x) for x in (1.0, 3.0, 3.0, -2.0)))
    entry = token_logprob(logits, 0, 3, PIECES.__getitem__)
    assert entry.logprob == pytest.approx(1.0 - log_total, abs=1e-6)
    assert entry.piece == b"a" and entry.token == "a"
    assert [t.piece for t in entry.top_logprobs] == [b"\xe6\x9d", b"c", b"a"]  # a tie goes to the lower id
    assert entry.top_logprobs[0].token == "\ufffd"  # part of a character: the bytes say what it is
    assert [t.logprob for t in entry.top_logprobs] == pytest.approx([3.0 - log_total, 3.0 - log_total,
                                                                     1.0 - log_total], abs=1e-6)
    assert all(t.top_logprobs == [] for t in entry.top_logprobs)
    assert token_logprob(logits, 3, 0, PIECES.__getitem__).top_logprobs == []
    assert len(token_logprob(logits, 3, 20, PIECES.__getitem__).top_logprobs) == 4  # no more than the vocabulary


def test_large_logits_do_not_overflow():
    logits = np.array([1000.0, 999.0], dtype=np.float32)
    entry = token_logprob(logits, 1, 1, PIECES.__getitem__)
    assert entry.logprob == pytest.approx(-1.0 - math.log1p(math.exp(-1.0)), abs=1e-5)
