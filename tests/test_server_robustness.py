"""Bad input, many clients and dropped streams against a live ``lokal serve``: every mistake gets a 4xx with
a clear message (never a 500), concurrent clients each get their own correct answer, and a client that
hangs up frees its slot. After each, the server is healthy and still answers correctly."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import httpx
import pytest
from server_fixture import MODEL, live_server, model_store, reference  # noqa: F401

NUM_PREDICT = 8
# Counting from different starts: 16 different prompts, each answered with a clear greedy margin.
PROMPTS = [", ".join(str(n) for n in range(start, start + 4)) + "," for start in range(1, 17)]
# A client gives a stream this long to free its slot after hanging up before calling it leaked.
RELEASE_SECONDS = 60


def generate(url: str, prompt: str, **fields) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "raw": True, "stream": False,
            "options": {"temperature": 0, "num_predict": NUM_PREDICT}, **fields}
    return httpx.post(url + "/api/generate", json=body, timeout=300)


def assert_healthy_and_correct(url: str, reference) -> None:
    assert httpx.get(url + "/api/health", timeout=10).json() == {"status": "ok"}
    answer = generate(url, PROMPTS[0])
    assert answer.status_code == 200, answer.text
    assert answer.json()["response"] == reference.complete(PROMPTS[0], NUM_PREDICT)


def assert_all_slots_free(url: str) -> None:
    """Ask the model to unload now: that happens at once only when no request holds it."""
    httpx.post(url + "/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=60).raise_for_status()
    deadline = time.monotonic() + RELEASE_SECONDS
    while httpx.get(url + "/api/ps", timeout=10).json()["models"]:
        assert time.monotonic() < deadline, "a request still holds the model: a slot was not freed"
        time.sleep(0.2)


@pytest.mark.parametrize("path, body, expected_status, message", [
    ("/api/generate", b"{not json", 400, "invalid JSON"),
    ("/api/generate", b"", 400, "request body is missing"),
    ("/api/generate", b"[1, 2]", 400, "must be a JSON object"),
    ("/api/generate", b'{"model": "smollm2", "prompt": 42}', 400, "invalid prompt"),
    ("/api/generate", b'{"model": "smollm2", "promt": "hi"}', 400, "unknown field 'promt'"),
    ("/api/generate", b'{"prompt": "hi"}', 400, "model is required"),
    ("/api/generate", b'{"model": "smollm2", "prompt": "hi", "options": {"temperature": "hot"}}', 400, "temperature"),
    ("/api/generate", b'{"model": "smollm2", "prompt": "hi", "keep_alive": "soon"}', 400, "keep_alive"),
    ("/api/generate", b'{"model": "../etc/passwd", "prompt": "hi"}', 400, "invalid model name"),
    ("/api/chat", b'{"model": "smollm2", "messages": [{"role": "robot", "content": "hi"}]}', 400, "role"),
    ("/api/chat", b'{"model": "smollm2", "messages": "hi"}', 400, "messages"),
    ("/api/embed", b'{"model": "smollm2", "input": 7}', 400, "input"),
    ("/api/copy", b'{"source": "smollm2"}', 400, "destination is required"),
    ("/api/show", b'{"model": "no-such-model"}', 404, "not found"),
    ("/api/pull", b'{"model": ""}', 400, "model"),
    ("/api/pull", b'{"model": "/etc/hostname"}', 400, "is a local path"),  # no server-side file reads
    ("/v1/chat/completions", b'{"model": "smollm2", "messages": []}', 400, "messages"),
    ("/v1/embeddings", b'{"model": "smollm2", "input": [[1, 2]]}', 400, "token arrays"),
])
def test_bad_requests_get_a_clear_4xx(live_server, path, body, expected_status, message):
    answer = httpx.post(live_server.url + path, content=body, timeout=60)
    assert answer.status_code == expected_status, answer.text
    error = answer.json()["error"]
    text = error["message"] if isinstance(error, dict) else error
    assert message in text


def test_foundry_download_refuses_server_side_paths(live_server):
    # Foundry's download answers 200 and reports failure in its body, as Foundry Local does.
    answer = httpx.post(live_server.url + "/openai/download", json={"model": "/etc/hostname"}, timeout=60)
    assert answer.json()["success"] is False and "is a local path" in answer.json()["errorMessage"]


def test_unknown_routes_and_methods(live_server):
    missing = httpx.get(live_server.url + "/api/nothing-here", timeout=10)
    assert missing.status_code == 404 and missing.json() == {"error": "not found: GET /api/nothing-here"}
    wrong_method = httpx.get(live_server.url + "/api/generate", timeout=10)
    assert wrong_method.status_code == 405 and "GET" in wrong_method.json()["error"]
    openai_missing = httpx.get(live_server.url + "/v1/nothing", timeout=10)
    assert openai_missing.status_code == 404 and openai_missing.json()["error"]["type"] == "not_found_error"


def test_a_50_mb_body_is_refused_with_413_declared_or_chunked(live_server, reference):
    body = b'{"model": "smollm2", "prompt": "' + b"a" * (50 * 1024 * 1024) + b'"}'
    declared = httpx.post(live_server.url + "/api/generate", content=body, timeout=120)
    assert declared.status_code == 413 and "too large" in declared.json()["error"]

    def chunks():
        for start in range(0, len(body), 1024 * 1024):
            yield body[start:start + 1024 * 1024]

    chunked = httpx.post(live_server.url + "/v1/chat/completions", content=chunks(), timeout=120)
    assert chunked.status_code == 413 and "too large" in chunked.json()["error"]["message"]
    assert_healthy_and_correct(live_server.url, reference)


def test_curl_style_form_content_type_is_read_as_json(live_server, reference):
    answer = httpx.post(live_server.url + "/api/generate", timeout=300,
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                        content=json.dumps({"model": MODEL, "prompt": PROMPTS[1], "raw": True, "stream": False,
                                            "options": {"temperature": 0, "num_predict": NUM_PREDICT}}))
    assert answer.status_code == 200 and answer.json()["response"] == reference.complete(PROMPTS[1], NUM_PREDICT)


def test_sixteen_clients_at_once_each_get_their_own_answer(live_server, reference):
    expected = [reference.complete(prompt, NUM_PREDICT) for prompt in PROMPTS]

    async def ask_all() -> list[dict]:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=300) as client:
            async def ask(prompt: str) -> dict:
                answer = await client.post("/api/generate", json={
                    "model": MODEL, "prompt": prompt, "raw": True, "stream": False,
                    "options": {"temperature": 0, "num_predict": NUM_PREDICT}})
                assert answer.status_code == 200, answer.text
                return answer.json()

            return await asyncio.gather(*(ask(prompt) for prompt in PROMPTS))

    answers = asyncio.run(ask_all())
    assert [answer["response"] for answer in answers] == expected
    assert all(answer["eval_count"] == NUM_PREDICT for answer in answers)
    assert_all_slots_free(live_server.url)


def test_dropped_streams_free_their_slots(live_server, reference):
    """20 streams (more than the 4 slots): each is read until its first token and dropped. Queued ones only
    get their first token once dropped ones free a slot, so this finishing at all is the first proof."""

    async def open_and_drop(client: httpx.AsyncClient, prompt: str) -> str:
        body = {"model": MODEL, "prompt": prompt, "raw": True, "options": {"temperature": 0, "num_predict": 500}}
        async with client.stream("POST", "/api/generate", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                return json.loads(line)["response"]  # leaving the block drops the connection
        raise AssertionError("the stream ended without a token")

    async def drop_all() -> list[str]:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=300) as client:
            return await asyncio.gather(*(open_and_drop(client, PROMPTS[i % len(PROMPTS)]) for i in range(20)))

    first_tokens = asyncio.run(drop_all())
    assert len(first_tokens) == 20 and all(first_tokens)
    assert_all_slots_free(live_server.url)
    assert_healthy_and_correct(live_server.url, reference)


def test_a_non_streaming_client_that_hangs_up_cancels_its_generation(live_server, reference):
    async def hang_up() -> None:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=2) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/api/generate", json={
                    "model": MODEL, "prompt": PROMPTS[2], "raw": True, "stream": False,
                    "options": {"temperature": 0, "num_predict": 100000, "num_ctx": 8192}})

    asyncio.run(hang_up())
    assert_all_slots_free(live_server.url)
    assert_healthy_and_correct(live_server.url, reference)


def test_blob_uploads_are_verified_and_bad_ones_store_nothing(live_server):
    data = b"not really a model, but bytes all the same"
    right = "sha256:" + hashlib.sha256(data).hexdigest()
    wrong = "sha256:" + hashlib.sha256(b"other bytes").hexdigest()
    mismatch = httpx.post(f"{live_server.url}/api/blobs/{wrong}", content=data, timeout=30)
    assert mismatch.status_code == 400 and "digest mismatch" in mismatch.json()["error"]
    assert httpx.head(f"{live_server.url}/api/blobs/{wrong}", timeout=30).status_code == 404
    assert httpx.head(f"{live_server.url}/api/blobs/{right}", timeout=30).status_code == 404
    malformed = httpx.post(f"{live_server.url}/api/blobs/sha256:xyz", content=data, timeout=30)
    assert malformed.status_code == 400 and "invalid digest" in malformed.json()["error"]
    stored = httpx.post(f"{live_server.url}/api/blobs/{right}", content=data, timeout=30)
    assert stored.status_code == 201
    assert httpx.head(f"{live_server.url}/api/blobs/{right}", timeout=30).status_code == 200
