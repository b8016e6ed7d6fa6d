"""GGUF and ONNX variants of SmolLM2 served side by side by one server, judged by the official ollama and
openai clients; Foundry Local 1.x's REST endpoints and /api/hardware."""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest
from server_fixture import start_server

GGUF = "smollm2"
ONNX = "smollm2:135m-onnx-int4-cpu"


@pytest.fixture(scope="module")
def server(onnx_store, tmp_path_factory):
    live = start_server(onnx_store, tmp_path_factory.mktemp("log") / "serve.log", num_parallel="2")
    yield live
    assert live.stop() == 0, live.log()


def generate(server, model: str, prompt: str, num_predict: int = 8) -> dict:
    response = httpx.post(server.url + "/api/generate", timeout=300, json={
        "model": model, "prompt": prompt, "raw": True, "stream": False,
        "options": {"temperature": 0, "num_predict": num_predict}})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("prompt, expected", [
    ("1, 2, 3, 4, 5, 6,", " 7, 8"),
    ("A, B, C, D, E, F,", " G, H"),
    ("10, 20, 30, 40,", " 50"),
])
def test_both_backends_agree_on_the_first_tokens_of_unambiguous_prompts(server, prompt, expected):
    gguf = generate(server, GGUF, prompt)["response"]
    onnx = generate(server, ONNX, prompt)["response"]
    assert gguf.startswith(expected) and onnx.startswith(expected), (gguf, onnx)


def test_ps_shows_format_device_and_concurrency(server):
    generate(server, GGUF, "Hi", 1)
    generate(server, ONNX, "Hi", 1)
    models = {m["name"]: m for m in httpx.get(server.url + "/api/ps").json()["models"]}
    # LOKAL_NUM_PARALLEL=2 here: both decode 2 at once, the ONNX one through GenAI's batching Engine.
    assert (models[ONNX]["format"], models[ONNX]["device"], models[ONNX]["concurrency"]) == ("onnx", "cpu", "batch")
    assert (models["smollm2:latest"]["format"], models["smollm2:latest"]["concurrency"]) == ("gguf", "batch")
    assert (models["smollm2:latest"]["num_parallel"], models[ONNX]["num_parallel"]) == (2, 2)
    assert "cpu" in models[ONNX]["device_reason"]
    assert models[ONNX]["details"]["format"] == "onnx"


def test_ollama_client_chats_with_the_onnx_model(server):
    client = ollama.Client(host=server.url)
    reply = client.chat(model=ONNX, messages=[{"role": "user", "content": "What is the capital of France?"}],
                        options={"temperature": 0, "num_predict": 24})
    assert "Paris" in reply.message.content
    assert reply.eval_count > 0 and reply.prompt_eval_count > 0 and reply.done_reason in ("stop", "length")
    chunks = list(client.generate(model=ONNX, prompt="1, 2, 3, 4, 5, 6,", raw=True, stream=True,
                                  options={"temperature": 0, "num_predict": 4}))
    assert "".join(c.response for c in chunks).startswith(" 7") and chunks[-1].done
    tags = {m.model: m for m in client.list().models}
    assert tags[ONNX].details.format == "onnx" and tags[ONNX].details.quantization_level == "int4"


def test_openai_client_streams_and_uses_json_schema_with_the_onnx_model(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="lokal")
    stream = client.chat.completions.create(model=ONNX, temperature=0, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "What is the capital of France?"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text and chunks[-1].usage.completion_tokens > 0
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    reply = client.chat.completions.create(
        model=ONNX, temperature=0, max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
        messages=[{"role": "user", "content": "Name a city in France as JSON."}])
    assert isinstance(json.loads(reply.choices[0].message.content)["city"], str)


def test_embeddings_from_a_generative_onnx_model_are_a_clear_400(server):
    response = httpx.post(server.url + "/api/embed", json={"model": ONNX, "input": "hello"}, timeout=120)
    assert response.status_code == 400 and "embedding" in response.json()["error"]


def test_foundry_service_endpoints(server):
    status = httpx.get(server.url + "/status").json()
    assert status["endpoints"] == [server.url] and status["modelDirPath"] == str(server.models)
    assert httpx.get(server.url + f"/models/load/{ONNX}", params={"ttl": 60}, timeout=120).json()["loaded"]
    loaded = {m["name"]: m for m in httpx.get(server.url + "/models/loaded").json()}
    assert loaded[ONNX]["format"] == "onnx" and loaded[ONNX]["device"] == "cpu"
    assert loaded[ONNX]["parallelRequests"] == 2
    assert ONNX in httpx.get(server.url + "/status").json()["loadedModels"]
    assert httpx.get(server.url + f"/models/unload/{ONNX}", timeout=60).json() == {"name": ONNX, "loaded": False}
    assert ONNX not in [m["name"] for m in httpx.get(server.url + "/models/loaded").json()]
    missing = httpx.get(server.url + "/models/load/no-such-model", timeout=60)
    assert missing.status_code == 404 and "not found" in missing.json()["error"]


def test_api_hardware(server):
    body = httpx.get(server.url + "/api/hardware").json()
    assert body["cpu"]["cores"] >= 1 and body["memory"]["total"] > 0
    assert "CPUExecutionProvider" in body["onnx_execution_providers"]
    assert "CPU" in body["llama_cpp_backends"] and "cpu" in body["devices"]
    assert body["preference"] == ["gpu", "npu", "cpu"]
