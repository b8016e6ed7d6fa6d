"""The seed document's own HTTP examples (shared/SEED_EXAMPLES.md §4 and §6), run as written against a live
``lokal serve``: only the address and the model names change (to the bundled SmolLM2)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import requests
from server_fixture import MODEL, live_server, model_store  # noqa: F401

# The examples set no or a large num_predict, so answers run to the end of the context: keep it small.
SERVER_ENV = {"context_length": "512"}
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def curl(url: str, data: str) -> dict:
    """``curl -X POST <url> -H "Content-Type: application/json" -d '<data>'``, exactly the seed's form."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    result = subprocess.run(["curl", "-sS", "-X", "POST", url, "-H", "Content-Type: application/json", "-d", data],
                            capture_output=True, text=True, timeout=600, check=True)
    return json.loads(result.stdout)


def test_curl_generate(live_server):
    answer = curl(live_server.url + "/api/generate", """{
    "model": "smollm2",
    "prompt": "Write a recursive function to calculate factorial",
    "stream": false
  }""")
    assert answer["done"] is True and answer["response"].strip()
    assert answer["done_reason"] in ("stop", "length") and answer["eval_count"] > 0


def test_curl_chat(live_server):
    answer = curl(live_server.url + "/api/chat", """{
    "model": "smollm2",
    "messages": [
      {"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "What is edge computing?"}
    ],
    "stream": false
  }""")
    assert answer["done"] is True
    assert answer["message"]["role"] == "assistant" and answer["message"]["content"].strip()


def test_curl_embeddings(live_server):
    answer = curl(live_server.url + "/api/embeddings", """{
    "model": "smollm2",
    "prompt": "Edge AI represents a paradigm shift in artificial intelligence deployment"
  }""")
    assert len(answer["embedding"]) > 0 and any(value != 0 for value in answer["embedding"])


def test_python_requests_example_stream_and_not(live_server):
    # The seed's §4 code, with its endpoint and model name swapped in.
    OLLAMA_ENDPOINT = live_server.url + "/api/generate"
    params = {
        "model": MODEL,
        "prompt": "Write a function to calculate the Fibonacci sequence in Python",
        "system": "You are a helpful Python programming assistant. Provide clean, efficient code with comments.",
        "stream": False,
        "options": {
            "temperature": 0.2,
            "top_p": 0.95,
            "num_predict": 1024
        }
    }
    response = requests.post(OLLAMA_ENDPOINT, json=params)
    result = response.json()
    assert result["response"].strip()

    printed = []

    def stream_response():
        params["stream"] = True
        response = requests.post(OLLAMA_ENDPOINT, json=params, stream=True)

        for line in response.iter_lines():
            if line:
                chunk = json.loads(line)
                if "response" in chunk:
                    printed.append(chunk["response"])
                if chunk.get("done", False):
                    return chunk

    last = stream_response()
    assert last is not None and last["done"] is True
    assert "".join(printed).strip() and len(printed) > 1
