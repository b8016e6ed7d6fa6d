"""Speculative decoding by prompt lookup: the guesses are found, accepted where the model agrees, and the
output is exactly what decoding one token per step gives (the independent reference loop at temperature 0,
and the same engine without guessing under a seed)."""

from __future__ import annotations

import pytest
from engine_runs import run_to_end

from lokal.engine import Engine, EngineConfig, SyncSink
from lokal.engine.draft import PromptLookup
from lokal.types import SamplingOptions, Token

# Copy-heavy: the answer repeats the paragraph, so prompt lookup guesses most of it.
PARAGRAPH = ("The quick brown fox jumps over the lazy dog. The dog sleeps under the old oak tree, while the fox "
             "runs back into the forest to find its family before the sun goes down.")
COPY_PROMPT = (f"<|im_start|>user\nRepeat this paragraph exactly:\n{PARAGRAPH}<|im_end|>\n"
               "<|im_start|>assistant\n")


def test_prompt_lookup_copies_what_followed_the_last_occurrence():
    lookup = PromptLookup()
    tokens = [1, 2, 3, 4, 5, 6, 9, 1, 2, 3]
    assert lookup.draft(tokens, 3) == [4, 5, 6]
    tokens += [4, 5, 7, 2, 3]  # grows incrementally; the most recent earlier "2 3" is followed by 4
    assert lookup.draft(tokens, 2) == [4, 5]
    assert lookup.draft([8, 9], 4) == []  # nothing recurs
    assert PromptLookup().draft([5, 5, 5], 0) == []


def test_prompt_lookup_prefers_the_longer_ngram():
    tokens = [5, 2, 3, 4, 6, 2, 3, 8, 5, 2, 3]
    # "2 3" last came before 8, but "5 2 3" (the longer match) came before 4, 6.
    assert PromptLookup().draft(tokens, 2) == [4, 6]


@pytest.fixture(scope="module")
def speculative(smollm2_path):
    with Engine(smollm2_path, EngineConfig(num_ctx=512, num_parallel=2, num_draft=8)) as engine:
        yield engine


def test_greedy_output_with_guessing_equals_the_plain_llama_cpp_loop(smollm2_path, speculative, greedy_reference):
    # Exact on this prompt, whose answer has no near-tie: accepted guesses' KV comes from the batched
    # kernels, so a later near-tie (a fraction of a logit) could break the other way (see README).
    tokens = speculative.tokenize(COPY_PROMPT)
    expected = greedy_reference(smollm2_path, tokens, 48)
    assert len(expected) >= 32, "the reference must produce enough tokens for the test to mean something"
    before = speculative.num_draft_accepted
    ids, done = run_to_end(speculative, tokens, SamplingOptions(temperature=0, num_predict=48))
    assert ids == expected
    assert done.eval_count == len(expected) + (done.reason == "stop")  # the end-of-generation token counts
    # Parts of the answer repeat the prompt or itself: those came out of accepted guesses.
    assert speculative.num_draft_accepted - before >= 2


def test_sampled_requests_guess_and_penalized_greedy_or_grammar_ones_do_not(speculative, smollm2_path):
    tokens = speculative.tokenize(COPY_PROMPT)
    for sampling, grammar in ((SamplingOptions(temperature=0, repeat_penalty=1.2, num_predict=16), None),
                              (SamplingOptions(temperature=0, num_predict=16), 'root ::= "The" [a-z ]*')):
        before = speculative.num_draft_accepted
        sink = SyncSink()
        speculative.submit(tokens, sampling, grammar=grammar, sink=sink)
        list(sink)
        assert speculative.num_draft_accepted == before
    # A sampled request keeps each token the model samples where it equals the guess: under one seed, the
    # answer of an engine that never guesses.
    sampling = SamplingOptions(temperature=0.3, seed=11, num_predict=24)
    before = speculative.num_draft_accepted
    ids, _ = run_to_end(speculative, tokens, sampling)
    assert speculative.num_draft_accepted > before
    with Engine(smollm2_path, EngineConfig(num_ctx=512, num_parallel=2)) as plain:
        assert run_to_end(plain, tokens, sampling)[0] == ids


def test_num_predict_and_stop_strings_hold_with_guessing(speculative):
    tokens = speculative.tokenize(COPY_PROMPT)
    ids, done = run_to_end(speculative, tokens, SamplingOptions(temperature=0, num_predict=5))
    assert len(ids) == 5 and done.reason == "length" and done.eval_count == 5
    sink = SyncSink()
    speculative.submit(tokens, SamplingOptions(temperature=0, num_predict=48, stop=["lazy"]), sink=sink)
    text = "".join(event.text for event in sink if isinstance(event, Token))
    whole, _ = run_to_end(speculative, tokens, SamplingOptions(temperature=0, num_predict=48))
    assert "lazy" in speculative.detokenize(whole)
    assert "lazy" not in text and speculative.detokenize(whole).startswith(text)


def test_requests_for_logprobs_decode_one_token_per_step(speculative):
    # A guessed position's logits come from the batched kernels; one-token steps give the exact values.
    tokens = speculative.tokenize(COPY_PROMPT)
    whole, _ = run_to_end(speculative, tokens, SamplingOptions(temperature=0, num_predict=24))
    before = speculative.num_draft_accepted
    sink = SyncSink()
    speculative.submit(tokens, SamplingOptions(temperature=0, num_predict=24), sink=sink, logprobs=1)
    pairs = [(token_id, entry) for event in sink if isinstance(event, Token)
             for token_id, entry in zip(event.ids, event.logprobs, strict=True)]
    assert speculative.num_draft_accepted == before
    assert [token_id for token_id, _ in pairs] == whole
    for token_id, entry in pairs:
        assert entry.piece == speculative.token_piece(token_id, special=True)
        assert entry.top_logprobs[0].logprob == entry.logprob <= 0


def test_prompt_lookup_rests_longer_after_each_refused_draft_and_recovers_on_a_hit():
    lookup = PromptLookup()
    tokens = [1, 2, 3, 4, 5, 6, 1, 2, 3]
    assert lookup.draft(tokens, 3) == [4, 5, 6]
    lookup.judged(3, 0)  # refused: rest 1 step, then probe with a single guess
    assert lookup.draft(tokens, 3) == []
    assert lookup.draft(tokens, 3) == [4]
    lookup.judged(1, 0)  # refused again: rest 2 steps
    assert [lookup.draft(tokens, 3) for _ in range(3)] == [[], [], [4]]
    lookup.judged(1, 1)  # the probe held: guess on at once, twice as far
    assert lookup.draft(tokens, 3) == [4, 5]
    lookup.judged(2, 2)
    assert lookup.draft(tokens, 3) == [4, 5, 6]
    lookup.judged(3, 1)  # one guess held: guess two next time
    assert lookup.draft(tokens, 3) == [4, 5]


def test_prompt_lookup_rests_at_most_max_rest_steps():
    from lokal.engine.draft import MAX_REST_STEPS

    lookup = PromptLookup()
    tokens = [7, 8, 9, 7, 8]
    for _ in range(10):
        lookup.judged(1, 0)
    rests = 0
    while lookup.draft(tokens, 2) == []:
        rests += 1
    assert rests == MAX_REST_STEPS
