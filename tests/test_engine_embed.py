"""Embeddings on the engine thread: normalized, deterministic, batch-independent, meaningful."""

from __future__ import annotations

import math
import threading

import pytest

from lokal.engine import Engine, EngineConfig, SyncSink
from lokal.errors import BadRequest, ContextOverflow, UnsupportedCapability
from lokal.types import SamplingOptions, Token


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def engine(smollm2_path):
    with Engine(smollm2_path, EngineConfig(num_ctx=512, num_parallel=2)) as engine:
        yield engine


def embed_texts(engine: Engine, texts: list[str], normalize: bool = True) -> list[list[float]]:
    return engine.embed([engine.tokenize(text) for text in texts], normalize=normalize)


def test_vectors_are_normalized_and_as_long_as_the_model_embedding(engine):
    vectors = embed_texts(engine, ["The cat sat on the mat.", "Quarterly revenue grew."])
    assert len(vectors) == 2
    for vector in vectors:
        assert len(vector) == engine.n_embd == int(engine.metadata["llama.embedding_length"])
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-5)
    raw = embed_texts(engine, ["The cat sat on the mat."], normalize=False)[0]
    norm = math.sqrt(sum(x * x for x in raw))
    assert norm > 0 and not math.isclose(norm, 1.0, rel_tol=1e-3)
    assert all(math.isclose(x / norm, y, rel_tol=1e-4, abs_tol=1e-6) for x, y in zip(raw, vectors[0], strict=True))


def test_identical_texts_give_identical_vectors(engine):
    first = embed_texts(engine, ["Identical input text."])[0]
    second = embed_texts(engine, ["Identical input text."])[0]
    assert first == second


def test_batched_embeddings_equal_separate_ones(engine):
    texts = ["A short one.", "A somewhat longer sentence about the weather in Lisbon in spring.", "Third!"]
    together = embed_texts(engine, texts)
    for text, batched in zip(texts, together, strict=True):
        alone = embed_texts(engine, [text])[0]
        assert max(abs(x - y) for x, y in zip(alone, batched, strict=True)) < 1e-4


def test_more_inputs_than_fit_in_one_batch(engine):
    texts = [f"Sentence number {i} about topic {i % 3}." for i in range(19)]
    vectors = embed_texts(engine, texts)
    assert len(vectors) == 19
    assert max(abs(x - y) for x, y in zip(vectors[18], embed_texts(engine, [texts[18]])[0], strict=True)) < 1e-4


def test_similar_sentences_are_closer_than_unrelated_ones(engine):
    cat, kitten, money = embed_texts(engine, ["The cat sat on the mat.", "A cat was sitting on the mat.",
                                              "Quarterly revenue grew by five percent."])
    assert cosine(cat, kitten) > cosine(cat, money)


def test_a_long_input_grows_the_embedding_context(engine):
    long_text = "word " * 700
    tokens = engine.tokenize(long_text)[:512]
    assert len(tokens) == 512
    vector = engine.embed([tokens])[0]
    assert len(vector) == engine.n_embd


def test_embedding_does_not_disturb_generation(engine):
    sink = SyncSink()
    engine.submit(engine.tokenize("1, 2, 3, 4, 5, 6,"), SamplingOptions(temperature=0, num_predict=8), sink=sink)
    vectors: list = []
    worker = threading.Thread(target=lambda: vectors.extend(embed_texts(engine, ["during generation"])))
    worker.start()
    text = "".join(event.text for event in sink if isinstance(event, Token))
    worker.join()
    assert text.startswith(" " + ", ".join(str(n) for n in range(7, 10))) and len(vectors) == 1


def test_bad_inputs_are_clear(engine):
    assert engine.embed([]) == []
    with pytest.raises(BadRequest, match="empty"):
        engine.embed([[]])
    with pytest.raises(ContextOverflow):
        engine.embed([[1] * 513])


def test_an_embedding_only_engine_refuses_generation(smollm2_path):
    with Engine(smollm2_path, EngineConfig(num_ctx=256, embedding=True)) as engine:
        assert len(engine.embed([engine.tokenize("hello")])[0]) == engine.n_embd
        with pytest.raises(UnsupportedCapability):
            engine.submit(engine.tokenize("hello"), SamplingOptions(), sink=SyncSink())
