"""A reranker GGUF (a BERT cross-encoder with rank pooling): imported from a safetensors folder with
`lokal create`, it scores /api/rerank and /v1/rerank pairs exactly as transformers' BertForSequenceClassification
does on the same folder (the independent reference, on torch).

No reranker can be downloaded here, so the test model is all-MiniLM-L6-v2 (from its pip package) given a
sequence-classification head with fixed, seeded random weights: a real cross-encoder in shape, and what a user
importing ms-marco-MiniLM or bge-reranker-base goes through.

Token types: llama.cpp's BERT graph adds token type 0 ("sentence A") to every token, where transformers gives
the document token type 1; the reference is therefore run with token_type_ids all 0, as llama.cpp reads the pair.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
from server_fixture import MODEL, pull_models, start_server

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Bananas are yellow and rich in potassium.",
    "The Eiffel Tower stands in Paris.",
    "Quarterly revenue grew by twelve percent.",
    "France's capital city, Paris, lies on the Seine.",
]

# Builds the cross-encoder folder: MiniLM's encoder, a seeded pooler + classifier head, num_labels 1. Runs in its
# own process (torch's OpenMP runtime and llama.cpp's in one process deadlock here).
_BUILD = """
import shutil, sys, torch
from transformers import BertConfig, BertForSequenceClassification
source, target = sys.argv[1], sys.argv[2]
config = BertConfig.from_pretrained(source, num_labels=1, architectures=["BertForSequenceClassification"])
model = BertForSequenceClassification.from_pretrained(source, config=config)
generator = torch.Generator().manual_seed(1234)
with torch.no_grad():
    for layer in (model.bert.pooler.dense, model.classifier):
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.1)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.1)
model.save_pretrained(target, safe_serialization=True)
for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(f"{source}/{name}", f"{target}/{name}")
"""

# The reference scores: transformers' own tokenizer and model on the folder, token types all 0 (see above).
_SCORE = """
import json, sys, torch
from transformers import AutoTokenizer, BertForSequenceClassification
folder = sys.argv[1]
query, documents = json.loads(sys.stdin.read())
tokenizer = AutoTokenizer.from_pretrained(folder)
model = BertForSequenceClassification.from_pretrained(folder).eval()
batch = tokenizer([query] * len(documents), documents, padding=True, return_tensors="pt")
with torch.no_grad():
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   token_type_ids=torch.zeros_like(batch["input_ids"])).logits
print(json.dumps({"scores": logits[:, 0].tolist(), "ids": [tokenizer(query, d)["input_ids"] for d in documents]}))
"""


def _python(script: str, *args: str, stdin: str = "") -> str:
    done = subprocess.run([sys.executable, "-c", script, *args], input=stdin, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def reranker_folder(tmp_path_factory) -> Path:
    package = pytest.importorskip("all_minilm_l6_v2")
    pytest.importorskip("transformers")
    minilm = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(package.get_model_zip_path()) as archive:
        archive.extractall(minilm)
    folder = tmp_path_factory.mktemp("reranker")
    _python(_BUILD, str(minilm), str(folder))
    return folder


@pytest.fixture(scope="module")
def reference(reranker_folder) -> dict:
    return json.loads(_python(_SCORE, str(reranker_folder), stdin=json.dumps([QUERY, DOCUMENTS])))


@pytest.fixture(scope="module")
def server(reranker_folder, tmp_path_factory):
    """A store with the bundled SmolLM2 and the reranker imported the way a user imports one (`lokal create`)."""
    root = pull_models(tmp_path_factory.mktemp("models"), MODEL)
    modelfile = tmp_path_factory.mktemp("modelfile") / "Modelfile"
    modelfile.write_text(f"FROM {reranker_folder}\n")
    created = subprocess.run([sys.executable, "-m", "lokal", "create", "reranker", "-f", str(modelfile)],
                             env={**_clean_env(), "LOKAL_MODELS": str(root)}, capture_output=True, text=True,
                             timeout=600)
    assert created.returncode == 0, created.stdout + created.stderr
    live = start_server(root, tmp_path_factory.mktemp("log") / "serve.log")
    yield live
    assert live.stop() == 0, live.log()


def _clean_env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if not key.startswith(("LOKAL_", "OLLAMA_"))}


def test_conversion_writes_rank_pooling_and_the_head(reranker_folder, tmp_path) -> None:
    import gguf

    from lokal.convert.safetensors_gguf import convert

    out = tmp_path / "reranker.gguf"
    convert(reranker_folder, out)
    reader = gguf.GGUFReader(out)
    pooling = reader.fields["bert.pooling_type"]
    assert int(pooling.parts[pooling.data[0]][0]) == gguf.PoolingType.RANK
    shapes = {tensor.name: list(tensor.shape) for tensor in reader.tensors}
    assert shapes["cls.weight"] == [384, 384] and shapes["cls.bias"] == [384]
    assert shapes["cls.output.weight"] == [384, 1] and shapes["cls.output.bias"] == [1]


def test_rerank_scores_match_transformers(server, reference) -> None:
    expected = reference["scores"]
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    for path in ("/api/rerank", "/v1/rerank"):
        response = httpx.post(server.url + path, timeout=120, json={
            "model": "reranker", "query": QUERY, "documents": DOCUMENTS, "return_documents": True})
        assert response.status_code == 200, response.text
        body = response.json()
        assert [r["index"] for r in body["results"]] == order
        for result in body["results"]:
            assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=2e-3)
            assert result["document"]["text"] == DOCUMENTS[result["index"]]
        # The tokens read are transformers' own [CLS] query [SEP] document [SEP] pairs.
        assert body["usage"]["prompt_tokens"] == sum(map(len, reference["ids"]))
    top = httpx.post(server.url + "/v1/rerank", timeout=120, json={
        "model": "reranker", "query": QUERY, "documents": DOCUMENTS, "top_n": 2}).json()
    assert [r["index"] for r in top["results"]] == order[:2] and "document" not in top["results"][0]


def test_reranker_shows_rerank_capability_and_refuses_embedding_and_chat_models(server) -> None:
    shown = httpx.post(server.url + "/api/show", json={"model": "reranker"}, timeout=60).json()
    assert shown["capabilities"] == ["rerank"]
    assert shown["model_info"]["bert.pooling_type"] == 4
    embed = httpx.post(server.url + "/api/embed", json={"model": "reranker", "input": "hello"}, timeout=60)
    assert embed.status_code == 400 and "reranker" in embed.json()["error"]
    # A chat model is neither a reranker nor an embedding model (test_server_tools covers the cosine path).
    chat_model = httpx.post(server.url + "/v1/rerank", timeout=120, json={
        "model": MODEL, "query": QUERY, "documents": DOCUMENTS[:2]})
    assert chat_model.status_code == 400 and "neither a reranker" in chat_model.json()["error"]["message"]


def test_pair_longer_than_the_context_is_a_clear_400(server) -> None:
    long_document = "word " * 2000
    response = httpx.post(server.url + "/v1/rerank", timeout=120, json={
        "model": "reranker", "query": QUERY, "documents": [DOCUMENTS[0], long_document]})
    assert response.status_code == 400 and "context length" in response.json()["error"]["message"]
    healthy = httpx.post(server.url + "/api/rerank", timeout=120, json={
        "model": "reranker", "query": QUERY, "documents": DOCUMENTS[:1]})
    assert healthy.status_code == 200


def test_a_multi_label_classifier_is_not_converted_as_a_reranker(reranker_folder, tmp_path) -> None:
    import shutil

    from lokal.convert.safetensors_gguf import ConversionError, convert

    folder = tmp_path / "classifier"
    shutil.copytree(reranker_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "negative", "1": "positive"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="2 labels is not a reranker"):
        convert(folder, tmp_path / "classifier.gguf")
