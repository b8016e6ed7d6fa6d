"""safetensors → GGUF: all-MiniLM-L6-v2 from its pip package, pulled offline as `all-minilm`, embeds like
sentence-transformers (the independent reference, on torch) does; a bad folder is a clear error."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import pytest

from lokal.config import Settings
from lokal.convert.safetensors_gguf import ConversionError, convert
from lokal.store.sources import pull
from lokal.store.store import Store

SENTENCES = [
    "The cat sat on the mat.",
    "A feline rested on the rug.",
    "Quarterly revenue grew by twelve percent.",
    "The central bank raised interest rates again.",
    "How do I reset my password?",
    "Edge AI represents a paradigm shift in artificial intelligence deployment.",
    "Local models keep data on the organisation's own machines.",
    "Photosynthesis turns sunlight into chemical energy.",
    "She plays the violin in the city orchestra.",
    "Lisbon is the capital of Portugal.",
    "Unit tests should be deterministic.",
    "¿Dónde está la estación de tren?",
]


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def minilm_folder(tmp_path_factory) -> Path:
    package = pytest.importorskip("all_minilm_l6_v2")
    folder = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(package.get_model_zip_path()) as archive:
        archive.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory, minilm_folder) -> Path:
    root = tmp_path_factory.mktemp("models")
    statuses = [event.status for event in pull(Store(root), "all-minilm", Settings(environ={"LOKAL_MODELS": str(root)}))]
    assert "converting safetensors to GGUF" in statuses and statuses[-1] == "success"
    return root


def test_all_minilm_embeddings_match_sentence_transformers(minilm_store, minilm_folder) -> None:
    from sentence_transformers import SentenceTransformer

    from lokal.llm import LLM

    expected = SentenceTransformer(str(minilm_folder), device="cpu").encode(SENTENCES)
    with LLM("all-minilm", settings=Settings(environ={"LOKAL_MODELS": str(minilm_store)}), pull=False) as llm:
        actual = llm.embed(SENTENCES)
        shown = llm.info()
    assert shown.capabilities == ["embedding"]
    assert shown.details["family"] == "bert" and shown.details["quantization_level"] == "F16"
    similarities = [cosine(a, b) for a, b in zip(actual, expected.tolist(), strict=True)]
    assert min(similarities) >= 0.99, similarities
    assert all(len(vector) == 384 for vector in actual)


def test_pulling_again_gives_the_same_model(minilm_store) -> None:
    store = Store(minilm_store)
    before = store.get("all-minilm").manifest.layer("model").digest
    for _ in pull(store, "all-minilm", Settings(environ={"LOKAL_MODELS": str(minilm_store)})):
        pass
    assert store.get("all-minilm").manifest.layer("model").digest == before  # the conversion is deterministic
    assert [p.name for p in store.blobs.root.iterdir() if p.name.startswith("tmp-")] == []


def test_a_folder_of_another_kind_is_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["WhisperForConditionalGeneration"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConversionError, match="cannot convert a WhisperForConditionalGeneration model"):
        convert(tmp_path, tmp_path / "out.gguf")
