"""The in-process Python API: sync and async, streaming, options, stats, embeddings."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from lokal import LLM
from lokal.config import Settings
from lokal.errors import BadRequest


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    settings = Settings(environ={"LOKAL_MODELS": str(root), "LOKAL_CONTEXT_LENGTH": "1024"})
    with LLM("smollm2", settings=settings, temperature=0) as model:  # pulls the bundled model offline
        yield model


def test_generate_returns_text_and_ollama_stats(llm):
    response = llm.generate("1, 2, 3, 4, 5, 6,", raw=True, options={"num_predict": 6})
    assert response.text.startswith(" 7, 8")
    done = response.done
    assert done.reason == "length" and done.eval_count == 6
    assert done.prompt_eval_count > 0 and done.prompt_eval_duration > 0 and done.eval_duration > 0
    assert done.total_duration >= done.eval_duration


def test_logprobs_come_with_the_tokens_when_asked(llm):
    response = llm.generate("1, 2, 3, 4, 5, 6,", raw=True, options={"num_predict": 4}, logprobs=2)
    assert len(response.logprobs) == response.done.eval_count == 4
    assert "".join(entry.token for entry in response.logprobs) == response.text
    for entry in response.logprobs:
        assert [top.logprob for top in entry.top_logprobs] == sorted((top.logprob for top in entry.top_logprobs),
                                                                     reverse=True)
        assert entry.top_logprobs[0].piece == entry.piece and entry.logprob <= 0
    assert llm.generate("1, 2,", raw=True, options={"num_predict": 1}).logprobs is None


def test_streaming_equals_the_whole_answer(llm):
    # Warm the prefix cache first: a reused prefix recomputes only the last prompt token, and a one-token
    # batch may round differently from a full prefill, which can flip a close greedy choice. Both compared
    # requests then take the same path.
    llm.chat([{"role": "user", "content": "Name a colour."}], options={"num_predict": 1})
    whole = llm.chat([{"role": "user", "content": "Name a colour."}], options={"num_predict": 24})
    chunks = list(llm.chat([{"role": "user", "content": "Name a colour."}], stream=True,
                           options={"num_predict": 24}))
    assert chunks[-1].done is not None and all(c.done is None for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == whole.text
    assert whole.text.strip()


def test_format_json_parses(llm):
    response = llm.chat([{"role": "user", "content": "Give me a JSON object describing a cat."}],
                        format="json", options={"num_predict": 64})
    if response.done.reason == "stop":
        json.loads(response.text)
    else:  # cut by num_predict: still a valid JSON prefix
        assert response.text.lstrip().startswith("{")


def test_async_api(llm):
    async def scenario():
        response = await llm.agenerate("a b c d e f g", raw=True, options={"num_predict": 4})
        chunks = [c async for c in await llm.achat([{"role": "user", "content": "Hi"}], stream=True,
                                                   options={"num_predict": 8})]
        vectors = await llm.aembed(["hello"])
        return response, chunks, vectors

    response, chunks, vectors = asyncio.run(scenario())
    assert response.text.startswith(" h i")
    assert chunks[-1].done is not None
    assert len(vectors) == 1


def test_embed_is_normalized(llm):
    vectors = llm.embed(["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock prices fell."])
    assert len(vectors) == 3 and len({len(v) for v in vectors}) == 1
    for vector in vectors:
        assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-3)
    similar = sum(a * b for a, b in zip(vectors[0], vectors[1]))
    unrelated = sum(a * b for a, b in zip(vectors[0], vectors[2]))
    assert similar > unrelated


def test_bad_messages_and_options_are_clear(llm):
    with pytest.raises(BadRequest, match="role"):
        llm.chat([{"content": "no role"}])
    with pytest.raises(BadRequest, match="unknown option"):
        llm.generate("x", options={"temprature": 1})


def test_in_process_use_is_quiet_unless_debugging(tmp_path):
    """llama.cpp prints hundreds of load lines (and state_read_meta ones) to stderr by itself; a script using
    LLM sees none of them unless LOKAL_DEBUG is set. A subprocess: this suite silences llama.cpp globally."""
    import subprocess
    import sys

    script = ("from lokal import LLM\nfrom lokal.config import Settings\nimport sys\n"
              "s = Settings(environ={'LOKAL_MODELS': sys.argv[1], 'LOKAL_CONTEXT_LENGTH': '256',"
              " 'LOKAL_DEBUG': sys.argv[2]})\n"
              "with LLM('smollm2', settings=s, temperature=0) as m:\n"
              "    print(m.generate('1, 2, 3,', raw=True, options={'num_predict': 2}).text)\n")
    quiet = subprocess.run([sys.executable, "-c", script, str(tmp_path), ""], capture_output=True, text=True,
                           timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "llama_model_loader" not in quiet.stderr and "llama_context" not in quiet.stderr, quiet.stderr[:500]
    loud = subprocess.run([sys.executable, "-c", script, str(tmp_path), "1"], capture_output=True, text=True,
                          timeout=300)
    assert loud.returncode == 0, loud.stderr
    assert "llama_model_loader" in loud.stderr
