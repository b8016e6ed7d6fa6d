"""The Ollama API through the official ``ollama`` Python client, against a live ``lokal serve``.

Answers are compared with llama-cpp-python's own high-level API on the same GGUF at temperature 0."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import ollama
import pytest
from server_fixture import GREEDY, MODEL, NUM_PREDICT, Reference, live_server, model_store, reference  # noqa: F401

COUNTING = "1, 2, 3, 4, 5,"
# Prompts whose greedy answers win by a clear logit margin at every step, so that float rounding (batched
# decoding, reused prefixes) cannot flip a token between lokal and the reference.
COUNT = [{"role": "user", "content": "Count from 1 to 10."}]
ONE_WORD = "You answer in one word."
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(live_server) -> ollama.Client:
    return ollama.Client(host=live_server.url, timeout=300)


def test_generate_raw_matches_the_reference(client, reference):
    answer = client.generate(MODEL, COUNTING, raw=True, options=GREEDY)
    assert answer.response == reference.complete(COUNTING)
    assert answer.done is True and answer.done_reason == "length"
    assert answer.eval_count == NUM_PREDICT
    assert answer.prompt_eval_count == reference.count_tokens(COUNTING)
    assert answer.total_duration >= answer.eval_duration > 0
    assert len(answer.context) == reference.count_tokens(COUNTING) + NUM_PREDICT


def test_generate_stream_is_the_same_answer_in_pieces(client, reference):
    chunks = list(client.generate(MODEL, COUNTING, raw=True, options=GREEDY, stream=True))
    assert all(chunk.done is False for chunk in chunks[:-1]) and chunks[-1].done is True
    assert len(chunks) > 2
    assert "".join(chunk.response for chunk in chunks) == reference.complete(COUNTING)
    assert chunks[-1].done_reason == "length" and chunks[-1].eval_count == NUM_PREDICT


def test_chat_matches_the_reference_chat_template_and_sampling(client, reference):
    answer = client.chat(MODEL, COUNT, options=GREEDY)
    assert answer.message.role == "assistant"
    assert answer.message.content == reference.chat(COUNT)
    assert answer.done_reason in ("length", "stop")


def test_chat_stream_with_a_system_prompt(client, reference):
    messages = [{"role": "system", "content": ONE_WORD}, *CAPITAL]
    chunks = list(client.chat(MODEL, messages, options=GREEDY, stream=True))
    assert chunks[-1].done is True and all(not chunk.done for chunk in chunks[:-1])
    assert "".join(chunk.message.content for chunk in chunks) == reference.chat(messages)


def test_structured_output_follows_the_json_schema(client):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"]}
    answer = client.chat(MODEL, [{"role": "user", "content": "Is Paris in France? Answer in JSON."}],
                         format=schema, options={"temperature": 0, "num_predict": 48})
    assert json.loads(answer.message.content)["answer"] in ("yes", "no")


def test_load_then_unload_with_an_empty_prompt(client):
    loaded = client.generate(MODEL, "", keep_alive="10m")
    assert loaded.done is True and loaded.done_reason == "load" and loaded.response == ""
    running = {model.model: model for model in client.ps().models}
    assert "smollm2:latest" in running
    entry = running["smollm2:latest"]
    assert entry.context_length == 1024 and entry.size > 0 and entry.details.family == "llama"
    assert entry.expires_at > datetime.now(timezone.utc)
    unloaded = client.generate(MODEL, "", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert "smollm2:latest" not in {model.model for model in client.ps().models}


def test_keep_alive_forever_shows_a_far_expiry(client):
    client.generate(MODEL, "", keep_alive=-1)
    (entry,) = [model for model in client.ps().models if model.model == "smollm2:latest"]
    assert entry.expires_at.year > datetime.now().year + 100
    client.generate(MODEL, "", keep_alive="5m")


def test_embed_and_the_legacy_embeddings_agree(client, reference):
    both = client.embed(MODEL, ["Edge AI runs models locally.", "The cat sat on the mat."])
    assert len(both.embeddings) == 2
    assert all(len(vector) == reference.llama.n_embd() for vector in both.embeddings)
    assert both.embeddings[0] != both.embeddings[1]
    assert both.prompt_eval_count > 0
    single = client.embeddings(MODEL, "Edge AI runs models locally.")
    assert _cosine(single.embedding, both.embeddings[0]) > 0.9999


def test_embed_dimensions_shortens_and_renormalizes(client):
    full = client.embed(MODEL, "Edge AI runs models locally.").embeddings[0]
    short = client.embed(MODEL, "Edge AI runs models locally.", dimensions=16).embeddings[0]
    assert len(short) == 16
    assert math.isclose(sum(x * x for x in short), 1.0, rel_tol=1e-4)
    norm = math.sqrt(sum(x * x for x in full[:16]))
    assert short == pytest.approx([x / norm for x in full[:16]], rel=1e-4, abs=1e-6)


def test_list_and_show_describe_the_stored_model(client, smollm2_path, reference):
    (listed,) = [model for model in client.list().models if model.model == "smollm2:latest"]
    from pathlib import Path

    assert listed.size >= Path(smollm2_path).stat().st_size
    assert listed.details.quantization_level == "Q4_1" and listed.details.format == "gguf"
    shown = client.show(MODEL)
    assert shown.details.family == "llama"
    assert shown.template == reference.llama.metadata["tokenizer.chat_template"]
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "completion" in shown.capabilities
    assert "FROM " in shown.modelfile


def test_pull_streams_progress_then_success(client):
    events = list(client.pull(MODEL, stream=True))
    assert events[-1].status == "success"
    assert client.pull(MODEL).status == "success"


def test_copy_then_delete(client, reference):
    client.copy(MODEL, "my-copy")
    names = {model.model for model in client.list().models}
    assert "my-copy:latest" in names
    answer = client.generate("my-copy", COUNTING, raw=True, options=GREEDY)
    assert answer.response == reference.complete(COUNTING)
    assert client.delete("my-copy").status == "success"
    assert "my-copy:latest" not in {model.model for model in client.list().models}
    with pytest.raises(ollama.ResponseError) as missing:
        client.delete("my-copy")
    assert missing.value.status_code == 404


def test_delete_removes_the_prompt_cache_of_weights_no_model_uses(client, live_server):
    from lokal.store.store import Store

    client.create("q8-cached", from_=MODEL, quantize="q8_0")  # weights of its own
    client.copy(MODEL, "cached-copy")  # weights shared with MODEL
    for name in ("q8-cached", "cached-copy"):
        client.generate(name, COUNTING, raw=True, options=GREEDY)
    store = Store(live_server.models)
    blob_of = {name: "sha256-" + store.get(name).manifest.layer("model").digest.removeprefix("sha256:")
               for name in ("q8-cached", MODEL)}

    def caches(name: str) -> list[Path]:
        return [folder for folder in store.kvcache_dir.glob(blob_of[name] + "-*") if any(folder.glob("*.kv"))]

    client.generate("q8-cached", "", keep_alive=0)  # Ollama's way to unload: its idle KV goes to disk
    for _ in range(300):
        if "q8-cached:latest" not in {model.model for model in client.ps().models}:
            break
        time.sleep(0.1)
    assert caches("q8-cached")
    client.delete("cached-copy")  # unloads it: its KV goes to disk for MODEL, which keeps the weights
    assert caches(MODEL)
    client.delete("q8-cached")  # nothing uses its weights any more: their blob and prompt cache go
    assert not list(store.kvcache_dir.glob(blob_of["q8-cached"] + "*")) and caches(MODEL)


def test_create_with_system_and_parameters(client, reference):
    progress = list(client.create("one-word", from_=MODEL, system=ONE_WORD,
                                  parameters={"temperature": 0, "num_predict": 6}, stream=True))
    assert progress[-1].status == "success"
    shown = client.show("one-word")
    assert f"SYSTEM \"\"\"{ONE_WORD}\"\"\"" in shown.modelfile
    assert "temperature" in shown.parameters and "num_predict" in shown.parameters
    answer = client.chat("one-word", CAPITAL)  # no options: the new model's PARAMETERs apply
    assert answer.message.content == reference.chat([{"role": "system", "content": ONE_WORD}, *CAPITAL], 6)
    assert answer.eval_count == 6 and answer.done_reason == "length"


def test_create_from_an_uploaded_gguf_blob(client, smollm2_path, reference):
    digest = client.create_blob(smollm2_path)
    assert client.create("uploaded", files={"model.gguf": digest}).status == "success"
    assert client.generate("uploaded", COUNTING, raw=True, options=GREEDY).response == reference.complete(COUNTING)


def test_create_quantized(client, live_server):
    assert client.create("smol-q8", from_=MODEL, quantize="q8_0").status == "success"
    shown = client.show("smol-q8")
    assert shown.details.quantization_level == "Q8_0"
    (quantized_path,) = [line[len("FROM "):] for line in shown.modelfile.splitlines() if line.startswith("FROM ")]
    answer = client.generate("smol-q8", COUNTING, raw=True, options=GREEDY)
    assert answer.response == Reference(quantized_path).complete(COUNTING)


def test_bad_requests_get_ollama_errors(client):
    with pytest.raises(ollama.ResponseError) as missing:
        client.generate("no-such-model", "hi")
    assert missing.value.status_code == 404 and "not found, try pulling it first" in missing.value.error
    with pytest.raises(ollama.ResponseError) as images:
        client.generate(MODEL, "What is this?", images=[b"\x89PNG\r\n\x1a\n"])
    assert images.value.status_code == 400 and "images" in images.value.error
    with pytest.raises(ollama.ResponseError) as option:
        client.generate(MODEL, "hi", options={"temprature": 0})
    assert option.value.status_code == 400 and "temprature" in option.value.error


def test_version(client):
    from lokal import __version__

    assert client._client.get("/api/version").json() == {"version": __version__}


def test_head_probes_answer_as_ollama_does(client):
    """Clients and proxies probe liveness with HEAD on /, /api/version and /api/tags (Ollama routes all three)."""
    for path in ("/", "/api/version", "/api/tags"):
        answer = client._client.head(path)
        assert answer.status_code == 200 and answer.content == b"", path


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
