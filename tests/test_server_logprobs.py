"""Log-probabilities on /api/generate, /api/chat, /v1/chat/completions, /v1/completions and /v1/responses,
through the official ``ollama`` and ``openai`` clients against a live ``lokal serve``, streaming and not.

The independent reference is llama-cpp-python's own ``create_completion(logprobs=…)`` (``logits_all``) on
the same GGUF: its own tokenizing, decoding and log-softmax. Temperature 0 throughout."""

from __future__ import annotations

import codecs
import json
import math

import httpx
import ollama
import openai
import pytest
from llama_cpp import llama_chat_format
from server_fixture import MODEL, NUM_PREDICT, Reference, live_server, model_store  # noqa: F401

PROMPT = "The capital of France is"
COUNT = [{"role": "user", "content": "Count from 1 to 10."}]
TOLERANCE = 1e-3  # lokal and the reference decode in different threads: last digits may differ
# A prompt whose prefix is cached has its last token computed alone, not in the prompt's batch: llama.cpp's
# one-token and batched kernels round differently, which moves SmolLM2's logprobs by up to ~0.05 (measured).
REUSED = 0.1
GREEDY = {"temperature": 0, "num_predict": NUM_PREDICT}


@pytest.fixture(scope="module")
def reference(smollm2_path) -> Reference:
    return Reference(smollm2_path, logits_all=True)


@pytest.fixture(scope="module")
def native(live_server) -> ollama.Client:
    return ollama.Client(host=live_server.url, timeout=300)


@pytest.fixture(scope="module")
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="lokal", timeout=300, max_retries=0)


def reference_logprobs(reference, prompt: str, num_tokens: int = NUM_PREDICT, num_top: int = 5) -> dict:
    result = reference.llama.create_completion(prompt, max_tokens=num_tokens, temperature=0, logprobs=num_top)
    return result["choices"][0]["logprobs"]


def chat_prompt(reference, messages) -> str:
    """The chat prompt as llama-cpp-python's own Jinja formatter renders the model's template."""
    formatter = llama_chat_format.Jinja2ChatFormatter(template=reference.llama.metadata["tokenizer.chat_template"],
                                                      eos_token="<|im_end|>", bos_token="<|im_start|>")
    return formatter(messages=messages).prompt


def check_distribution(entries) -> None:
    """At temperature 0 the chosen token is the likeliest; alternatives sorted, probabilities sum <= 1."""
    for entry in entries:
        top = entry["top_logprobs"]
        assert top, entry
        assert top[0]["token"] == entry["token"] and top[0]["logprob"] == pytest.approx(entry["logprob"])
        assert all(entry["logprob"] >= other["logprob"] for other in top)
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-6
        assert entry["logprob"] <= 0


def test_ollama_generate_logprobs_match_llama_cpp_python(native, reference):
    response = native.generate(model=MODEL, prompt=PROMPT, raw=True, options=GREEDY, logprobs=True,
                               top_logprobs=5).model_dump()
    entries = response["logprobs"]
    expected = reference_logprobs(reference, PROMPT)
    assert len(entries) == response["eval_count"] == NUM_PREDICT
    assert "".join(entry["token"] for entry in entries) == response["response"]
    assert [entry["token"] for entry in entries] == expected["tokens"][:NUM_PREDICT]
    for entry, logprob, top in zip(entries, expected["token_logprobs"], expected["top_logprobs"]):
        assert entry["logprob"] == pytest.approx(float(logprob), abs=TOLERANCE)
        assert len(entry["top_logprobs"]) == 5
        assert_same_alternatives(entry["top_logprobs"], top)
    check_distribution(entries)


def assert_same_alternatives(ours: list[dict], theirs: dict) -> None:
    """llama-cpp-python writes control tokens (``<|im_end|>``) as "", lokal as their text, like Ollama."""
    assert len(ours) == len(theirs)
    assert [t["logprob"] for t in ours] == pytest.approx(sorted(map(float, theirs.values()), reverse=True),
                                                         abs=TOLERANCE)
    for alternative in ours:
        if not alternative["token"].startswith("<|"):
            assert alternative["logprob"] == pytest.approx(float(theirs[alternative["token"]]), abs=TOLERANCE)


def test_ollama_chat_stream_puts_each_chunks_logprobs_beside_its_text(native, reference):
    chunks = [chunk.model_dump() for chunk in native.chat(model=MODEL, messages=COUNT, options=GREEDY,
                                                              logprobs=True, top_logprobs=3, stream=True)]
    *parts, last = chunks
    for chunk in parts:
        assert "".join(entry["token"] for entry in chunk["logprobs"]) == chunk["message"]["content"]
    entries = [entry for chunk in parts for entry in chunk["logprobs"]]
    assert len(entries) == last["eval_count"] == NUM_PREDICT and not last.get("logprobs")
    check_distribution(entries)
    # The first request for this prompt in the module: computed whole, as the reference computes it.
    expected = reference_logprobs(reference, chat_prompt(reference, COUNT), num_top=3)
    assert entries[0]["token"] == expected["tokens"][0]
    assert entries[0]["logprob"] == pytest.approx(float(expected["token_logprobs"][0]), abs=TOLERANCE)
    whole = native.chat(model=MODEL, messages=COUNT, options=GREEDY, logprobs=True, top_logprobs=3).model_dump()
    assert whole["message"]["content"] == "".join(chunk["message"]["content"] for chunk in parts)
    assert [e["token"] for e in whole["logprobs"]] == [e["token"] for e in entries]
    assert [e["logprob"] for e in whole["logprobs"]] == pytest.approx([e["logprob"] for e in entries], abs=REUSED)


def test_multibyte_characters_split_across_tokens_keep_their_bytes(live_server, reference):
    prompt = "日本の首都は"
    # Raw NDJSON: the ollama client's Logprob type has no ``bytes`` field (Ollama's api/types.go has).
    body = {"model": MODEL, "prompt": prompt, "raw": True, "options": GREEDY, "logprobs": True}
    with httpx.stream("POST", live_server.url + "/api/generate", json=body, timeout=300) as response:
        chunks = [json.loads(line) for line in response.iter_lines() if line]
    text = "".join(chunk["response"] for chunk in chunks)
    entries = [entry for chunk in chunks for entry in chunk.get("logprobs") or ()]
    assert any(len(chunk["logprobs"]) > 1 for chunk in chunks if chunk.get("logprobs")), "no split character"
    # A token may end inside a character; a chunk carries the tokens whose bytes complete its text.
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # as lokal shows invalid bytes
    *parts, last = chunks
    for chunk in parts:  # the last one ends the output: a cut-off character shows as U+FFFD
        data = b"".join(bytes(entry["bytes"]) for entry in chunk["logprobs"])
        assert utf8.decode(data, final=chunk is parts[-1]) == chunk["response"]
    assert last["done"] and "logprobs" not in last
    assert b"".join(bytes(entry["bytes"]) for entry in entries).decode(errors="replace") == text
    assert len(entries) == NUM_PREDICT
    expected = reference_logprobs(reference, prompt, num_top=1)
    for entry, logprob in zip(entries, expected["token_logprobs"]):
        assert entry["logprob"] == pytest.approx(float(logprob), abs=TOLERANCE)
        assert entry["top_logprobs"] == []


def test_openai_chat_logprobs_stream_and_not(client, native):
    completion = client.chat.completions.create(model=MODEL, messages=COUNT, temperature=0, max_tokens=NUM_PREDICT,
                                                logprobs=True, top_logprobs=4)
    (choice,) = completion.choices
    content = [entry.model_dump() for entry in choice.logprobs.content]
    assert "".join(entry["token"] for entry in content) == choice.message.content
    assert len(content) == completion.usage.completion_tokens == NUM_PREDICT
    assert all(len(entry["top_logprobs"]) == 4 for entry in content)
    check_distribution(content)
    ollama_side = native.chat(model=MODEL, messages=COUNT, options=GREEDY, logprobs=True).model_dump()["logprobs"]
    assert [e["token"] for e in ollama_side] == [e["token"] for e in content]
    assert [e["logprob"] for e in ollama_side] == pytest.approx([e["logprob"] for e in content], abs=REUSED)

    chunks = list(client.chat.completions.create(model=MODEL, messages=COUNT, temperature=0, max_tokens=NUM_PREDICT,
                                                 logprobs=True, top_logprobs=4, stream=True))
    streamed = []
    for chunk in chunks:
        (streamed_choice,) = chunk.choices
        if streamed_choice.delta.content:
            entries = [entry.model_dump() for entry in streamed_choice.logprobs.content]
            assert "".join(entry["token"] for entry in entries) == streamed_choice.delta.content
            streamed += entries
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].choices[0].logprobs is None
    assert [(e["token"], e["logprob"]) for e in streamed] == [(e["token"], e["logprob"]) for e in content]


def test_openai_completions_logprobs_in_the_legacy_shape(client, reference):
    prompt = "The capital of Italy is"  # not asked before in this module: computed whole, as the reference does
    completion = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=NUM_PREDICT,
                                           logprobs=3)
    (choice,) = completion.choices
    logprobs = choice.logprobs
    expected = reference_logprobs(reference, prompt, num_top=3)
    assert logprobs.tokens == expected["tokens"][:NUM_PREDICT]
    assert logprobs.token_logprobs == pytest.approx([float(x) for x in expected["token_logprobs"][:NUM_PREDICT]],
                                                    abs=TOLERANCE)
    for ours, theirs in zip(logprobs.top_logprobs, expected["top_logprobs"]):
        assert_same_alternatives([{"token": token, "logprob": logprob} for token, logprob in ours.items()], theirs)
    assert logprobs.text_offset[0] == 0
    for token, offset in zip(logprobs.tokens, logprobs.text_offset):
        assert choice.text[offset:offset + len(token)] == token

    chunks = list(client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=NUM_PREDICT,
                                            logprobs=3, stream=True, echo=True))
    tokens, offsets = [], []
    text = ""
    for chunk in chunks:
        if chunk.choices[0].logprobs:
            tokens += chunk.choices[0].logprobs.tokens
            offsets += chunk.choices[0].logprobs.text_offset
        text += chunk.choices[0].text
    assert tokens == logprobs.tokens and text == prompt + choice.text
    assert offsets == [len(prompt) + offset for offset in logprobs.text_offset]


def test_responses_api_output_text_logprobs(client):
    response = client.responses.create(model=MODEL, input=COUNT[0]["content"], temperature=0,
                                       max_output_tokens=NUM_PREDICT, include=["message.output_text.logprobs"],
                                       top_logprobs=2, store=False)
    (message,) = response.output
    (part,) = message.content
    entries = [entry.model_dump() for entry in part.logprobs]
    assert "".join(entry["token"] for entry in entries) == part.text and len(entries) == NUM_PREDICT
    assert all(len(entry["top_logprobs"]) == 2 for entry in entries)
    check_distribution(entries)
    events = list(client.responses.create(model=MODEL, input=COUNT[0]["content"], temperature=0,
                                          max_output_tokens=NUM_PREDICT, include=["message.output_text.logprobs"],
                                          stream=True, store=False))
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    for delta in deltas:
        assert "".join(entry.token for entry in delta.logprobs) == delta.delta
    (done,) = [event for event in events if event.type == "response.output_text.done"]
    assert [entry.token for entry in done.logprobs] == [entry["token"] for entry in entries]
    plain = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, store=False)
    assert all(part.logprobs == [] for item in plain.output if item.type == "message" for part in item.content)


def test_requests_without_logprobs_carry_none(native, client):
    response = native.generate(model=MODEL, prompt=PROMPT, raw=True, options=GREEDY)
    assert response.logprobs is None
    chunks = list(native.chat(model=MODEL, messages=COUNT, options=GREEDY, stream=True))
    assert all(chunk.logprobs is None for chunk in chunks)
    completion = client.chat.completions.create(model=MODEL, messages=COUNT, temperature=0, max_tokens=2)
    assert completion.choices[0].logprobs is None


@pytest.mark.parametrize("path, body, message", [
    ("/api/generate", {"prompt": "x", "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/api/chat", {"messages": COUNT, "logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": COUNT, "top_logprobs": 2}, "top_logprobs needs logprobs"),
    ("/v1/chat/completions", {"messages": COUNT, "logprobs": True, "top_logprobs": 30}, "top_logprobs"),
    ("/v1/completions", {"prompt": "x", "logprobs": 6}, "logprobs"),
])
def test_out_of_range_requests_are_a_clear_400(live_server, path, body, message):
    response = httpx.post(live_server.url + path, json={"model": MODEL, **body}, timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.text
    assert httpx.get(live_server.url + "/api/version", timeout=10).status_code == 200


def test_openai_client_refuses_nothing_it_may_send(client):
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=MODEL, messages=COUNT, max_tokens=1, logprobs=True, top_logprobs=21)
