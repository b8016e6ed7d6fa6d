"""ONNX embedding models: `lokal convert all-minilm --to onnx` exports the bundled all-MiniLM-L6-v2 safetensors
with torch.onnx, and the server embeds with it through ONNX Runtime (mean pooling, normalized) on /api/embed and
/v1/embeddings. The judge is the GGUF all-minilm (itself checked against sentence-transformers in
test_engine_embed.py): cosine ≥ 0.999 on every text."""

from __future__ import annotations

import httpx
import numpy as np
import ollama
import openai
import pytest
from server_fixture import pull_models, start_server
from typer.testing import CliRunner

from lokal.cli import app

GGUF = "all-minilm"
ONNX = "all-minilm:22m-onnx-fp32-cpu"
TEXTS = ["The cat sits on the mat.", "A quick brown fox jumps over the lazy dog",
         "Embeddings turn text into vectors; similar meanings land close together.", "x"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    root = pull_models(tmp_path_factory.mktemp("embed-models"), GGUF)
    converted = CliRunner().invoke(app, ["convert", GGUF, "--to", "onnx"],
                                   env={"LOKAL_MODELS": str(root), "LOKAL_HOST": "127.0.0.1:1"})
    assert converted.exit_code == 0, converted.output
    assert f"created {ONNX}" in converted.output
    return root


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    live = start_server(store, tmp_path_factory.mktemp("log") / "serve.log")
    yield live
    assert live.stop() == 0, live.log()


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_onnx_embeddings_match_the_gguf_model(server):
    client = ollama.Client(host=server.url)
    gguf = client.embed(model=GGUF, input=TEXTS).embeddings
    onnx = client.embed(model=ONNX, input=TEXTS).embeddings
    assert len(onnx) == len(TEXTS) and len(onnx[0]) == 384
    assert cosines(gguf, onnx).min() >= 0.999
    assert np.allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-4)  # normalized, as sentence-transformers does


def test_openai_client_gets_the_same_vectors(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="lokal")
    reply = client.embeddings.create(model=ONNX, input=TEXTS[:2])
    native = httpx.post(server.url + "/api/embed", json={"model": ONNX, "input": TEXTS[:2]}, timeout=120).json()
    assert cosines([item.embedding for item in reply.data], native["embeddings"]).min() >= 0.99999
    assert reply.usage.prompt_tokens > 0


def test_the_store_describes_it_as_an_onnx_embedding_model(server):
    shown = httpx.post(server.url + "/api/show", json={"model": ONNX}, timeout=60).json()
    assert shown["capabilities"] == ["embedding"] and shown["details"]["format"] == "onnx"
    refused = httpx.post(server.url + "/api/generate", timeout=60,
                         json={"model": ONNX, "prompt": "hi", "stream": False})
    assert refused.status_code == 400 and "embedding" in refused.json()["error"]


def test_convert_refuses_quantizing_an_embedding_model(store):
    result = CliRunner().invoke(app, ["convert", GGUF, "--to", "onnx", "--precision", "int4"],
                                env={"LOKAL_MODELS": str(store), "LOKAL_HOST": "127.0.0.1:1"})
    assert result.exit_code == 1 and "fp32" in result.output
