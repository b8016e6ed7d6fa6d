"""A second model family: Gemma 3 270M (its own vocabulary, BOS, end-of-turn token, sliding-window KV)."""

from __future__ import annotations

import pytest

from lokal.engine import Engine, EngineConfig, SyncSink
from lokal.types import Done, SamplingOptions, Token

STORY = "Once upon a time, in a quiet village by the river,"


def generate(engine: Engine, tokens: list[int], sampling: SamplingOptions) -> tuple[str, list[int], Done]:
    sink = SyncSink()
    engine.submit(tokens, sampling, sink=sink)
    events = list(sink)
    ids = [token for event in events if isinstance(event, Token) for token in event.ids]
    return "".join(event.text for event in events if isinstance(event, Token)), ids, events[-1]


@pytest.fixture(scope="module")
def engine(gemma3_path):
    with Engine(gemma3_path, EngineConfig(num_ctx=512, num_parallel=2)) as engine:
        yield engine


def test_gemma_vocabulary_and_special_tokens(engine):
    assert engine.metadata["general.architecture"] == "gemma3"
    assert engine.n_vocab == 262144 and engine.add_bos
    assert engine.bos_text == "<bos>" and engine.tokenize("hi")[0] == engine.bos
    end_of_turn = engine.tokenize("<end_of_turn>", add_special=False)
    assert len(end_of_turn) == 1 and engine.is_eog(end_of_turn[0])
    assert engine.detokenize(engine.tokenize("Grüße, 東京!")) == "Grüße, 東京!"


def test_gemma_greedy_matches_a_plain_llama_cpp_loop(gemma3_path, greedy_reference):
    with Engine(gemma3_path, EngineConfig(num_ctx=512, num_parallel=2)) as fresh:
        tokens = fresh.tokenize("The capital of France is Paris. The capital of Italy is")
        expected = greedy_reference(gemma3_path, tokens, 16)
        assert expected
        _, ids, _ = generate(fresh, tokens, SamplingOptions(temperature=0, num_predict=16))
        assert ids == expected


def test_gemma_streams_stay_apart_and_end_tokens_are_its_own(engine):
    counting = ", ".join(str(n) for n in range(1, 7)) + ","
    letters = " ".join("abcdefg")
    sinks = []
    for prompt in (counting, letters, counting, letters):
        sink = SyncSink()
        engine.submit(engine.tokenize(prompt), SamplingOptions(temperature=0, num_predict=8), sink=sink)
        sinks.append(sink)
    texts = ["".join(e.text for e in sink if isinstance(e, Token)) for sink in sinks]
    continuations = [" " + ", ".join(str(n) for n in range(7, 10)), " " + " ".join("hij")] * 2
    for text, expected in zip(texts, continuations, strict=True):
        assert text.startswith(expected), (text, expected)
    assert engine.eos_text == "<eos>" and engine.is_eog(engine.eos) and not engine.is_eog(engine.bos)


def test_gemma_prefix_reuse(engine):
    prompt = engine.tokenize(STORY)
    _, first_ids, _ = generate(engine, prompt, SamplingOptions(temperature=0, num_predict=4))
    _, again_ids, again = generate(engine, prompt, SamplingOptions(temperature=0, num_predict=4))
    assert again.prompt_eval_count == 0 and again_ids == first_ids  # the first token from the cached logits
    longer = prompt + engine.tokenize(" a", add_special=False)
    _, _, longer_done = generate(engine, longer, SamplingOptions(temperature=0, num_predict=4))
    assert longer_done.prompt_eval_count == 1
