"""``lokal.Client`` and ``lokal.AsyncClient`` against a live ``lokal serve``: every endpoint, streaming
iterators, typed errors. Answers are compared with llama-cpp-python's high-level API at temperature 0."""

from __future__ import annotations

import asyncio

import pytest
from server_fixture import GREEDY, MODEL, NUM_PREDICT, free_port, live_server, model_store, reference  # noqa: F401

import lokal
from lokal.errors import BadRequest, ModelNotFound, ServerUnavailable

COUNTING = "1, 2, 3, 4, 5,"
COUNT = [{"role": "user", "content": "Count from 1 to 10."}]


@pytest.fixture(scope="module")
def client(live_server):
    with lokal.Client(live_server.host) as client:
        yield client


def test_service_endpoints(client):
    assert client.is_running() is True
    assert client.version() == lokal.__version__
    assert client.health() == {"status": "ok"}


def test_generate_and_stream(client, reference):
    expected = reference.complete(COUNTING)
    answer = client.generate(MODEL, COUNTING, raw=True, options=GREEDY)
    assert answer["response"] == expected and answer["done"] is True
    chunks = list(client.generate(MODEL, COUNTING, raw=True, options=GREEDY, stream=True))
    assert "".join(chunk["response"] for chunk in chunks) == expected and chunks[-1]["done"] is True


def test_chat_and_stream(client, reference):
    expected = reference.chat(COUNT)
    assert client.chat(MODEL, COUNT, options=GREEDY)["message"]["content"] == expected
    chunks = list(client.chat(MODEL, COUNT, options=GREEDY, stream=True))
    assert "".join(chunk["message"]["content"] for chunk in chunks) == expected


def test_embed_and_embeddings(client, reference):
    vectors = client.embed(MODEL, ["a cat", "a dog"])["embeddings"]
    assert len(vectors) == 2 and len(vectors[0]) == reference.llama.n_embd()
    single = client.embeddings(MODEL, "a cat")["embedding"]
    assert single == pytest.approx(vectors[0], rel=1e-4, abs=1e-6)


def test_load_ps_and_stop(client):
    assert client.load(MODEL, keep_alive="10m")["done_reason"] == "load"
    assert [model["model"] for model in client.ps()["models"]] == ["smollm2:latest"]
    assert client.stop(MODEL)["done_reason"] == "unload"
    assert client.ps()["models"] == []


def test_model_management(client, smollm2_path, reference):
    assert "smollm2:latest" in [model["model"] for model in client.list()["models"]]
    assert client.show(MODEL)["details"]["quantization_level"] == "Q4_1"
    assert client.pull(MODEL)["status"] == "success"
    assert list(client.pull(MODEL, stream=True))[-1]["status"] == "success"
    assert client.copy(MODEL, "sdk-copy") is None
    made = client.create("sdk-made", from_="sdk-copy", system="You answer in one word.", license="MIT",
                         messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    assert made["status"] == "success"
    shown = client.show("sdk-made")
    assert shown["system"] == "You answer in one word." and shown["license"] == "MIT"
    assert shown["messages"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    with pytest.raises(BadRequest, match="unsupported quantization type"):
        client.create("sdk-bad", from_=MODEL, quantize="q3_nonsense")
    with pytest.raises(BadRequest, match="unknown option"):
        client.create("sdk-bad", from_=MODEL, parameters={"temprature": 0})
    digest = client.create_blob(smollm2_path)
    assert client.blob_exists(digest) is True
    assert client.blob_exists("sha256:" + "0" * 64) is False
    assert list(client.create("sdk-file", files={"smol.gguf": digest}, stream=True))[-1]["status"] == "success"
    assert client.generate("sdk-file", COUNTING, raw=True, options=GREEDY)["response"] == reference.complete(COUNTING)
    for name in ("sdk-copy", "sdk-made", "sdk-file"):
        assert client.delete(name) is None
    assert {"sdk-copy:latest", "sdk-made:latest", "sdk-file:latest"}.isdisjoint(
        model["model"] for model in client.list()["models"])


def test_openai_endpoints(client, reference):
    completion = client.chat_completions(MODEL, COUNT, temperature=0, max_tokens=NUM_PREDICT)
    assert completion["choices"][0]["message"]["content"] == reference.chat(COUNT)
    chunks = list(client.chat_completions(MODEL, COUNT, temperature=0, max_tokens=NUM_PREDICT, stream=True))
    assert "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks) == reference.chat(COUNT)
    text = client.completions(MODEL, COUNTING, temperature=0, max_tokens=NUM_PREDICT)["choices"][0]["text"]
    assert text == reference.complete(COUNTING)
    assert len(client.openai_embeddings(MODEL, ["a", "b"])["data"]) == 2
    assert "smollm2:latest" in [model["id"] for model in client.models()["data"]]
    assert client.model(MODEL)["id"] == "smollm2:latest"


def test_foundry_endpoints(client, live_server):
    assert client.foundry_status()["modelDirPath"] == str(live_server.models)
    assert "smollm2:latest" in client.foundry_models()
    client.foundry_load(MODEL, ttl=60)
    assert client.foundry_loaded_models() == ["smollm2:latest"]
    client.foundry_unload(MODEL)
    client.foundry_load(MODEL)
    client.foundry_unload_all()
    assert client.foundry_loaded_models() == []
    assert client.foundry_download(MODEL) == {"success": True, "errorMessage": None}


def test_errors_are_typed(client):
    with pytest.raises(ModelNotFound, match="not found"):
        client.generate("no-such-model", "hi")
    with pytest.raises(ModelNotFound):
        list(client.chat("no-such-model", COUNT, stream=True))
    with pytest.raises(BadRequest, match="unknown option 'temprature'") as typo:
        client.generate(MODEL, "hi", options={"temprature": 0})
    assert typo.value.status == 400
    with pytest.raises(BadRequest, match="n > 1"):
        client.chat_completions(MODEL, COUNT, n=2)


def test_no_server_is_server_unavailable():
    with lokal.Client(f"127.0.0.1:{free_port()}") as nobody:
        assert nobody.is_running() is False
        with pytest.raises(ServerUnavailable, match="no lokal server answers"):
            nobody.list()


def test_async_client(live_server, smollm2_path, reference):
    async def scenario():
        async with lokal.AsyncClient(live_server.host) as client:
            assert await client.is_running() is True
            answer = await client.generate(MODEL, COUNTING, raw=True, options=GREEDY)
            chunks = [chunk async for chunk in await client.chat(MODEL, COUNT, options=GREEDY, stream=True)]
            vectors = (await client.embed(MODEL, "a cat"))["embeddings"]
            listed = await client.list()
            sse = [chunk async for chunk in await client.chat_completions(MODEL, COUNT, temperature=0,
                                                                            max_tokens=NUM_PREDICT, stream=True)]
            digest = await client.create_blob(smollm2_path)
            with pytest.raises(ModelNotFound):
                await client.show("no-such-model")
            return answer, chunks, vectors, listed, sse, digest

    answer, chunks, vectors, listed, sse, digest = asyncio.run(scenario())
    assert answer["response"] == reference.complete(COUNTING)
    assert "".join(chunk["message"]["content"] for chunk in chunks) == reference.chat(COUNT)
    assert len(vectors[0]) == reference.llama.n_embd()
    assert "smollm2:latest" in [model["model"] for model in listed["models"]]
    assert "".join(chunk["choices"][0]["delta"]["content"] for chunk in sse) == reference.chat(COUNT)
    assert digest.startswith("sha256:") and len(digest) == 71


def test_async_client_without_a_server():
    async def scenario():
        async with lokal.AsyncClient(f"127.0.0.1:{free_port()}") as nobody:
            assert await nobody.is_running() is False
            with pytest.raises(ServerUnavailable):
                await nobody.ps()

    asyncio.run(scenario())
