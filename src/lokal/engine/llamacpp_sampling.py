"""llama.cpp's C samplers for one request (llama-cpp-python's low-level API): building the chain from
SamplingOptions, and sampling from logits that are not the context's (a prompt cache's, or with a grammar).
The runner (llamacpp.py) owns the samplers' lifetimes and calls these on the engine thread."""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Sequence

import llama_cpp as llama
import numpy as np

from lokal.errors import LokalError
from lokal.types import SamplingOptions


@dataclass(eq=False)
class Sampler:
    """One request's C samplers: a chain, and a grammar kept apart from it (see ``sample_from_logits``)."""

    chain: object
    grammar: object | None = None


def free_c_samplers(sampler: Sampler) -> None:
    llama.llama_sampler_free(sampler.chain)
    if sampler.grammar:
        llama.llama_sampler_free(sampler.grammar)


def fill_chain(chain: object, sampling: SamplingOptions, history: Sequence[int], *, n_vocab: int,
               eog_ids: Sequence[int], num_ctx: int) -> None:
    """penalties → top_k → typical → top_p → min_p → temp → dist(seed), or greedy at temperature 0;
    ``history`` (the prompt) primes the penalties, ``num_ctx`` is their window when repeat_last_n is -1."""
    add = llama.llama_sampler_chain_add
    if sampling.ignore_eos:
        biases = (llama.llama_logit_bias * len(eog_ids))(*[(t, -math.inf) for t in eog_ids])
        add(chain, llama.llama_sampler_init_logit_bias(n_vocab, len(eog_ids), biases))
    has_penalties = sampling.repeat_last_n != 0 and (
        sampling.repeat_penalty != 1.0 or sampling.frequency_penalty != 0.0 or sampling.presence_penalty != 0.0)
    if has_penalties:
        last_n = num_ctx if sampling.repeat_last_n < 0 else sampling.repeat_last_n
        penalties = llama.llama_sampler_init_penalties(
            n_vocab, last_n, sampling.repeat_penalty, sampling.frequency_penalty, sampling.presence_penalty)
        for token in history[-last_n:]:
            llama.llama_sampler_accept(penalties, token)
        add(chain, penalties)
    if sampling.temperature <= 0:
        add(chain, llama.llama_sampler_init_greedy())
        return
    if sampling.top_k > 0:
        add(chain, llama.llama_sampler_init_top_k(sampling.top_k))
    if sampling.typical_p < 1.0:
        add(chain, llama.llama_sampler_init_typical(sampling.typical_p, 1))
    if sampling.top_p < 1.0:
        add(chain, llama.llama_sampler_init_top_p(sampling.top_p, 1))
    if sampling.min_p > 0.0:
        add(chain, llama.llama_sampler_init_min_p(sampling.min_p, 1))
    add(chain, llama.llama_sampler_init_temp(sampling.temperature))
    seed = llama.LLAMA_DEFAULT_SEED if sampling.seed < 0 else sampling.seed & 0xFFFFFFFF
    add(chain, llama.llama_sampler_init_dist(seed))


class Candidates:
    """One reusable llama_token_data_array over the whole vocabulary."""

    def __init__(self, n_vocab: int):
        self._rows = np.zeros(n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._array = llama.llama_token_data_array(data=self._rows.ctypes.data_as(llama.llama_token_data_p))

    def of(self, logits: np.ndarray) -> llama.llama_token_data_array:
        """Every token with its logit, unsorted, nothing selected (what llama_sampler_sample starts from)."""
        rows = self._rows
        rows["id"] = self._ids
        rows["logit"] = logits
        rows["p"] = 0.0
        array = self._array
        array.size, array.selected, array.sorted = len(rows), -1, False
        return array


def sample_from_logits(sampler: Sampler, logits: np.ndarray, candidates: Candidates) -> int:
    """What llama_sampler_sample does, over ``logits`` that need not be the context's; the samplers accept
    the token. Checking a grammar against every token of the vocabulary costs far more than a decode step, so
    this does as llama.cpp's own sampler does: sample without it, and only when the grammar rejects that token,
    sample again with the grammar applied to all candidates."""
    array = candidates.of(logits)
    llama.llama_sampler_apply(sampler.chain, ctypes.byref(array))
    token = array.data[array.selected].id
    if sampler.grammar is not None:
        if not grammar_allows(sampler.grammar, token):
            array = candidates.of(logits)
            llama.llama_sampler_apply(sampler.grammar, ctypes.byref(array))
            llama.llama_sampler_apply(sampler.chain, ctypes.byref(array))
            token = array.data[array.selected].id
            if not grammar_allows(sampler.grammar, token):  # llama.cpp aborts the process on accepting it
                raise LokalError("the format's grammar allows no token here")
        llama.llama_sampler_accept(sampler.grammar, token)
    llama.llama_sampler_accept(sampler.chain, token)
    return token


def grammar_allows(grammar: object, token: int) -> bool:
    single = llama.llama_token_data(token, 1.0, 0.0)
    one = llama.llama_token_data_array(data=ctypes.pointer(single), size=1, selected=-1, sorted=False)
    llama.llama_sampler_apply(grammar, ctypes.byref(one))
    return not math.isinf(single.logit)
