"""Tool calling, thinking, tokenize/detokenize, counting, rerank and null options, end to end through a live
``lokal serve`` with the official ``ollama`` and ``openai`` clients as judges."""

from __future__ import annotations

import json

import httpx
import numpy as np
import ollama
import openai
import pytest
from server_fixture import MODEL, NUM_PREDICT, live_server, pull_models, reference  # noqa: F401

GREEDY = {"temperature": 0, "num_predict": NUM_PREDICT}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# A Modelfile-style TEMPLATE over SmolLM2 that opens a think block when thinking is asked for.
THINK_TEMPLATE = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                  "<|im_start|>assistant\n{{ if .Think }}<think>\n{{ end }}")


EMBEDDER = "all-minilm"  # rerank by cosine similarity needs an embedding model


@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    """The bundled SmolLM2, and all-minilm (converted from its pip package's safetensors) for rerank."""
    return pull_models(tmp_path_factory.mktemp("models"), MODEL, EMBEDDER)


@pytest.fixture(scope="module")
def ollama_client(live_server) -> ollama.Client:
    return ollama.Client(host=live_server.url, timeout=300)


@pytest.fixture(scope="module")
def openai_client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="lokal", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def thinker(live_server) -> str:
    response = httpx.post(live_server.url + "/api/create", timeout=120,
                          json={"model": "thinker", "from": MODEL, "template": THINK_TEMPLATE, "stream": False})
    assert response.status_code == 200, response.text
    return "thinker"


def valid_weather_arguments(arguments: dict) -> bool:
    return (set(arguments) == {"city", "unit"} and isinstance(arguments["city"], str)
            and arguments["unit"] in ("celsius", "fahrenheit"))


# ---- tools ------------------------------------------------------------------------------------------------


def test_show_reports_tools_capability(ollama_client):
    assert "tools" in ollama_client.show(MODEL).capabilities


def test_required_tool_choice_is_enforced(openai_client):
    completion = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=60)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert valid_weather_arguments(json.loads(call.function.arguments))
    assert not choice.message.content


def test_named_tool_choice_streamed(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], temperature=0, max_tokens=60, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls: dict[int, dict] = {}
    finishes = []
    for chunk in stream:
        delta = chunk.choices[0].delta
        assert "<tool_call>" not in (delta.content or "")
        for call in delta.tool_calls or ():
            entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
        finishes.append(chunk.choices[0].finish_reason)
    assert finishes[-1] == "tool_calls"
    assert list(calls) == [0] and calls[0]["name"] == "get_time"
    assert isinstance(json.loads(calls[0]["arguments"])["city"], str)


def test_tool_choice_none_answers_in_text(openai_client):
    completion = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=NUM_PREDICT)
    assert completion.choices[0].message.tool_calls is None and completion.choices[0].message.content


def test_unknown_named_tool_is_400(openai_client):
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        openai_client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=4,
                                              tool_choice={"type": "function", "function": {"name": "nope"}})


def test_ollama_tools_never_show_markup(ollama_client):
    """Without tool_choice (Ollama has none) the model decides; whatever it does, calls come out parsed."""
    # Asked once first, so that both requests compared reuse its prompt's KV and compute only the last prompt
    # token: a first request computes it inside the prompt's batch, whose kernels round differently, and at a
    # near-tie a greedy answer can turn the other way.
    ollama_client.chat(model=MODEL, messages=ASK, tools=[WEATHER], options={"temperature": 0, "num_predict": 1})
    streamed_calls, content = [], ""
    for chunk in ollama_client.chat(model=MODEL, messages=ASK, tools=[WEATHER], stream=True,
                                    options={"temperature": 0, "num_predict": 60}):
        content += chunk.message.content or ""
        streamed_calls += chunk.message.tool_calls or []
    whole = ollama_client.chat(model=MODEL, messages=ASK, tools=[WEATHER], options={"temperature": 0, "num_predict": 60})
    assert "<tool_call>" not in content and "<tool_call>" not in whole.message.content
    assert whole.message.content == content
    assert [c.function.name for c in whole.message.tool_calls or []] == [c.function.name for c in streamed_calls]
    for call in streamed_calls:
        assert isinstance(call.function.arguments, dict)  # Ollama's shape: an object, not a string


def test_round_trip_with_both_clients(ollama_client, openai_client, live_server, reference):
    first = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=60)
    call = first.choices[0].message.tool_calls[0]
    result = {"role": "tool", "tool_call_id": call.id, "content": "sunny"}
    messages = ASK + [first.choices[0].message.model_dump(exclude_none=True), result]
    answer = openai_client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                                   tool_choice="none", temperature=0, max_tokens=NUM_PREDICT)
    assert answer.choices[0].message.content

    def count(text: str) -> int:
        body = {"model": MODEL, "messages": ASK + [first.choices[0].message.model_dump(exclude_none=True),
                                                   {**result, "content": text}], "tools": [WEATHER]}
        response = httpx.post(live_server.url + "/v1/chat/completions/input_tokens", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["input_tokens"]

    # The tool's result goes through the template: a longer result is exactly its extra tokens longer.
    assert count("sunny and warm") - count("sunny") == reference.count_tokens(" and warm")

    ollama_answer = ollama_client.chat(model=MODEL, tools=[WEATHER], options=GREEDY, messages=ASK + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": json.loads(call.function.arguments)}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"}])
    assert ollama_answer.message.role == "assistant" and ollama_answer.done


def test_tools_on_a_model_without_them_is_400(live_server):
    response = httpx.post(live_server.url + "/api/create", timeout=120, json={
        "model": "notools", "from": MODEL, "template": "{{ .Prompt }}", "stream": False})
    assert response.status_code == 200
    response = httpx.post(live_server.url + "/api/chat", timeout=60, json={
        "model": "notools", "messages": ASK, "tools": [WEATHER], "stream": False})
    assert response.status_code == 400 and "tools" in response.json()["error"]


# ---- thinking ---------------------------------------------------------------------------------------------


def test_thinking_split(ollama_client, thinker, reference):
    assert "thinking" in ollama_client.show(thinker).capabilities
    prompt = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    messages = [{"role": "user", "content": "What is 2+2?"}]
    thought = ollama_client.chat(model=thinker, messages=messages, think=True, options=GREEDY)
    expected = reference.complete(prompt + "<think>\n")
    if "</think>" in expected:
        thinking, _, content = expected.partition("</think>")
        assert (thought.message.thinking, thought.message.content) == (thinking, content.lstrip())
    else:
        assert thought.message.thinking == expected and thought.message.content == ""
    streamed = list(ollama_client.chat(model=thinker, messages=messages, think=True, options=GREEDY, stream=True))
    assert "".join(c.message.thinking or "" for c in streamed) == thought.message.thinking
    assert "".join(c.message.content for c in streamed) == thought.message.content
    plain = ollama_client.chat(model=thinker, messages=messages, think=False, options=GREEDY)
    assert plain.message.thinking is None and plain.message.content == reference.complete(prompt)


def test_reasoning_effort_on_v1(openai_client, thinker):
    completion = openai_client.chat.completions.create(
        model=thinker, messages=[{"role": "user", "content": "What is 2+2?"}], reasoning_effort="low",
        temperature=0, max_tokens=NUM_PREDICT)
    message = completion.choices[0].message
    assert message.model_extra["reasoning_content"] and "<think>" not in (message.content or "")


def test_think_on_a_model_without_thinking_is_400(ollama_client, openai_client):
    with pytest.raises(ollama.ResponseError, match="thinking") as info:
        ollama_client.chat(model=MODEL, messages=ASK, think=True, options=GREEDY)
    assert info.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match="think must be"):
        ollama_client.generate(model=MODEL, prompt="hi", think="very")  # type: ignore[arg-type]


# ---- tokenize, count, rerank, null options ----------------------------------------------------------------


def test_tokenize_and_detokenize(live_server, reference):
    text = "Hello world, <|im_start|>user"
    tokens = httpx.post(live_server.url + "/api/tokenize", json={"model": MODEL, "text": text}, timeout=60).json()
    assert tokens["tokens"] == reference.llama.tokenize(text.encode(), add_bos=False, special=True)
    back = httpx.post(live_server.url + "/api/detokenize", json={"model": MODEL, "tokens": tokens["tokens"]},
                      timeout=60).json()
    assert back["text"] == text
    bad = httpx.post(live_server.url + "/api/detokenize", json={"model": MODEL, "tokens": [10 ** 9]}, timeout=60)
    assert bad.status_code == 400


def test_rerank_by_cosine(live_server, ollama_client):
    documents = ["Paris is the capital of France.", "Bananas are yellow.", "France's capital city is Paris."]
    query = "What is the capital of France?"
    vectors = np.array(ollama_client.embed(model=EMBEDDER, input=[query, *documents]).embeddings)
    cosine = [float(vectors[0] @ v / np.linalg.norm(vectors[0]) / np.linalg.norm(v)) for v in vectors[1:]]
    for path in ("/api/rerank", "/v1/rerank"):
        body = httpx.post(live_server.url + path, timeout=60, json={
            "model": EMBEDDER, "query": query, "documents": documents, "top_n": 2, "return_documents": True}).json()
        expected = sorted(range(3), key=lambda i: -cosine[i])[:2]
        assert [r["index"] for r in body["results"]] == expected
        for result in body["results"]:
            assert result["relevance_score"] == pytest.approx(cosine[result["index"]], abs=1e-5)
            assert result["document"]["text"] == documents[result["index"]]
    empty = httpx.post(live_server.url + "/v1/rerank", json={"model": MODEL, "query": "q", "documents": []}, timeout=60)
    assert empty.status_code == 400 and empty.json()["error"]["type"] == "invalid_request_error"
    chat_model = httpx.post(live_server.url + "/api/rerank", json={"model": MODEL, "query": query,
                                                                   "documents": documents}, timeout=60)
    assert chat_model.status_code == 400 and "neither a reranker nor an embedding model" in chat_model.json()["error"]


def test_null_means_unset(live_server, ollama_client):
    """langchain-ollama's OllamaEmbeddings sends every unset option as null."""
    body = {"model": MODEL, "input": ["hello"], "truncate": None, "keep_alive": None,
            "options": {"num_gpu": None, "num_thread": None, "temperature": None, "stop": None}}
    response = httpx.post(live_server.url + "/api/embed", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["embeddings"][0] == ollama_client.embed(model=MODEL, input=["hello"]).embeddings[0]
    chat = httpx.post(live_server.url + "/api/chat", timeout=60, json={
        "model": MODEL, "messages": ASK, "stream": False, "format": None, "tools": None, "think": None,
        "options": {**GREEDY, "top_k": None, "seed": None}})
    assert chat.status_code == 200, chat.text
    assert chat.json()["message"]["content"] == ollama_client.chat(model=MODEL, messages=ASK,
                                                                   options=GREEDY).message.content
