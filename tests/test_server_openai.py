"""The OpenAI-compatible API through the official ``openai`` Python client, against a live ``lokal serve``.

Answers are compared with llama-cpp-python's own high-level API on the same GGUF at temperature 0."""

from __future__ import annotations

import array
import base64
import json
import math

import httpx
import openai
import pytest
from llama_cpp import llama_chat_format
from server_fixture import MODEL, NUM_PREDICT, live_server, model_store, reference  # noqa: F401

# Prompts whose greedy answers win by a clear logit margin at every step (see test_server_ollama.py).
COUNT = [{"role": "user", "content": "Count from 1 to 10."}]
COUNTING = "1, 2, 3, 4, 5,"


@pytest.fixture(scope="module")
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="lokal", timeout=300, max_retries=0)


def prompt_tokens(reference, messages) -> int:
    """Tokens of the chat prompt, rendered by llama-cpp-python's own Jinja formatter."""
    metadata = reference.llama.metadata
    formatter = llama_chat_format.Jinja2ChatFormatter(template=metadata["tokenizer.chat_template"],
                                                      eos_token="<|im_end|>", bos_token="<|im_start|>")
    prompt = formatter(messages=messages).prompt
    return len(reference.llama.tokenize(prompt.encode(), add_bos=False, special=True))


def test_chat_completion_matches_the_reference(client, reference):
    completion = client.chat.completions.create(model=MODEL, messages=COUNT, temperature=0, max_tokens=NUM_PREDICT)
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == reference.chat(COUNT)
    assert choice.finish_reason == "length"
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.usage.completion_tokens == NUM_PREDICT
    assert completion.usage.prompt_tokens == prompt_tokens(reference, COUNT)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + NUM_PREDICT


def test_chat_completion_stream_with_usage(client, reference):
    chunks = list(client.chat.completions.create(model=MODEL, messages=COUNT, temperature=0,
                                                 max_completion_tokens=NUM_PREDICT, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == reference.chat(COUNT)
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == NUM_PREDICT
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_legacy_completion_continues_the_prompt_as_written(client, reference):
    completion = client.completions.create(model=MODEL, prompt=COUNTING, temperature=0, max_tokens=NUM_PREDICT)
    assert completion.choices[0].text == reference.complete(COUNTING)
    assert completion.usage.completion_tokens == NUM_PREDICT
    streamed = client.completions.create(model=MODEL, prompt=COUNTING, temperature=0, max_tokens=NUM_PREDICT,
                                         stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == reference.complete(COUNTING)
    echoed = client.completions.create(model=MODEL, prompt=COUNTING, temperature=0, max_tokens=4, echo=True)
    assert echoed.choices[0].text == COUNTING + reference.complete(COUNTING, 4)


def test_stop_sequence_ends_the_answer(client, reference):
    completion = client.completions.create(model=MODEL, prompt=COUNTING, temperature=0, max_tokens=NUM_PREDICT,
                                           stop=[" 8"])
    expected = reference.complete(COUNTING)
    assert completion.choices[0].text == expected[:expected.index(" 8")]
    assert completion.choices[0].finish_reason == "stop"


def test_response_format_json_schema(client):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is Paris in France? Answer in JSON."}],
        temperature=0, max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}})
    assert json.loads(completion.choices[0].message.content)["answer"] in ("yes", "no")


def test_embeddings_as_floats_and_base64(client, reference):
    texts = ["Edge AI runs models locally.", "The cat sat on the mat."]
    floats = client.embeddings.create(model=MODEL, input=texts)
    assert [item.index for item in floats.data] == [0, 1]
    assert all(len(item.embedding) == reference.llama.n_embd() for item in floats.data)
    encoded = client.embeddings.create(model=MODEL, input=texts, encoding_format="base64")
    decoded = array.array("f", base64.b64decode(encoded.data[0].embedding))  # little-endian float32
    assert list(decoded) == pytest.approx(floats.data[0].embedding, rel=1e-6, abs=1e-7)
    short = client.embeddings.create(model=MODEL, input=texts[0], dimensions=32)
    assert len(short.data[0].embedding) == 32
    assert math.isclose(sum(x * x for x in short.data[0].embedding), 1.0, rel_tol=1e-4)
    assert floats.usage.prompt_tokens > 0


def test_models_list_and_retrieve(client):
    ids = [model.id for model in client.models.list()]
    assert "smollm2:latest" in ids
    model = client.models.retrieve("smollm2")
    assert model.id == "smollm2:latest" and model.object == "model" and model.created > 0
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert "not found" in missing.value.message


def test_extra_body_options_set_ollama_load_options(client, live_server):
    client.chat.completions.create(model=MODEL, messages=COUNT, max_tokens=1, extra_body={"options": {"num_ctx": 512}})
    running = httpx.get(live_server.url + "/api/ps").json()["models"]
    assert [model["context_length"] for model in running if model["model"] == "smollm2:latest"] == [512]


def test_ignore_eos_generates_exactly_max_tokens(client):
    # "Hi" is answered in a few tokens; with ignore_eos the answer runs on to max_tokens, as benchmarks need.
    for extra in ({"ignore_eos": True}, {"options": {"ignore_eos": True}}):
        completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                    temperature=0, max_tokens=48, extra_body=extra)
        assert completion.usage.completion_tokens == 48 and completion.choices[0].finish_reason == "length"
    plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                           temperature=0, max_tokens=48)
    assert plain.usage.completion_tokens < 48 and plain.choices[0].finish_reason == "stop"


def test_errors_are_openai_error_objects(client, live_server):
    with pytest.raises(openai.BadRequestError) as several:
        client.chat.completions.create(model=MODEL, messages=COUNT, n=2)
    assert "n > 1" in several.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=COUNT)
    assert missing.value.body["code"] == "model_not_found"
    answer = httpx.post(live_server.url + "/v1/chat/completions", content=b"{not json")
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "invalid JSON" in answer.json()["error"]["message"]


def test_prompt_tokens_count_the_whole_prompt_when_the_answer_ends_with_the_end_token(client, reference):
    # The end-of-turn token counts in completion_tokens (Ollama's eval_count) but is no part of the prompt.
    messages = [{"role": "user", "content": "Say hello."}]
    completion = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=64)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == prompt_tokens(reference, messages)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
