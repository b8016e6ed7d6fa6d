"""Speculative decoding with a DRAFT model: a Modelfile's ``DRAFT`` is checked and stored, ``show`` renders it,
and a model with one answers at temperature 0 exactly as the independent plain llama.cpp loop does, with
guesses accepted; a draft of another vocabulary is refused at create time and at load time.

The target is SmolLM2 dequantized to f16 by ``lokal create -q f16``; its draft is the bundled Q4_1 SmolLM2
(the same vocabulary, cheaper per token)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from engine_runs import run_to_end
from server_fixture import pull_models

from lokal.config import Settings
from lokal.create import CreateSpec, create_model
from lokal.engine import Engine, EngineConfig
from lokal.errors import BadRequest, ModelLoadError
from lokal.llm import LLM
from lokal.store.store import Store
from lokal.types import SamplingOptions

PARAGRAPH = ("The quick brown fox jumps over the lazy dog. The dog sleeps under the old oak tree, while the fox "
             "runs back into the forest to find its family before the sun goes down.")
COPY_PROMPT = (f"<|im_start|>user\nRepeat this paragraph exactly:\n{PARAGRAPH}<|im_end|>\n"
               "<|im_start|>assistant\n")
NUM_PREDICT = 40
COUNTING = "1, 2, 3, 4, 5, 6,"  # both models continue it with confidence: the draft's guesses are taken


def lokal(models: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    env.update(LOKAL_MODELS=str(models), LOKAL_HOST="127.0.0.1:9")  # nothing answers on port 9: in-process
    return subprocess.run([sys.executable, "-m", "lokal", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A store with SmolLM2 and "smol-drafted": SmolLM2 as f16 with the bundled Q4_1 SmolLM2 as its DRAFT."""
    root = pull_models(tmp_path_factory.mktemp("models"), "smollm2")
    folder = tmp_path_factory.mktemp("modelfile")
    (folder / "Modelfile").write_text("FROM smollm2\nDRAFT smollm2\nPARAMETER temperature 0\n")
    done = lokal(root, "create", "smol-drafted", "-f", "Modelfile", "-q", "f16", cwd=folder)
    assert done.returncode == 0, done.stderr
    return root


def test_the_draft_is_stored_shared_and_shown(models):
    store = Store(models)
    drafted, base = store.open("smol-drafted"), store.open("smollm2")
    assert drafted.draft == base.path  # the draft layer names the bundled model's blob: nothing copied
    assert drafted.details.quantization_level == "F16"
    shown = lokal(models, "show", "--modelfile", "smol-drafted")
    assert shown.returncode == 0 and f"DRAFT {base.path}" in shown.stdout


def test_greedy_output_with_the_draft_model_equals_the_plain_llama_cpp_loop(models, greedy_reference):
    stored = Store(models).open("smol-drafted")
    config = EngineConfig(num_ctx=512, num_parallel=2, num_draft=8, draft_model=str(stored.draft))
    with Engine(str(stored.path), config) as engine:
        tokens = engine.tokenize(COPY_PROMPT)
        ids, done = run_to_end(engine, tokens, SamplingOptions(temperature=0, num_predict=NUM_PREDICT))
        assert engine.num_draft_accepted > 0
        assert engine.num_draft_proposed >= engine.num_draft_accepted
        # Sampled requests guess too: each token is still the target's own sample, so under one seed the
        # answer is the one decoding without guesses gives (below).
        accepted = engine.num_draft_accepted
        sampled, _ = run_to_end(engine, tokens, SamplingOptions(temperature=0.3, seed=7, num_predict=24))
        assert engine.num_draft_accepted > accepted
    expected = greedy_reference(str(stored.path), tokens, NUM_PREDICT)
    assert len(expected) >= 30, "the reference must produce enough tokens for the test to mean something"
    assert ids == expected and done.eval_count == len(expected) + (done.reason == "stop")  # EOS counts
    with Engine(str(stored.path), EngineConfig(num_ctx=512, num_parallel=2)) as plain:
        assert run_to_end(plain, tokens, SamplingOptions(temperature=0.3, seed=7, num_predict=24))[0] == sampled


def test_a_model_with_a_draft_guesses_through_the_runtime_and_draft_num_predict_0_turns_it_off(models):
    with LLM("smol-drafted", settings=Settings(environ={"LOKAL_MODELS": str(models)}), pull=False) as llm:
        answer = llm.generate(COUNTING, raw=True, options={"num_predict": 24})
        ((_, engine),) = llm.runtime.loaded_engines()
        assert engine.config.draft_model and engine.config.num_draft == 8 and engine.num_draft_accepted > 0
        plain = llm.generate(COUNTING, raw=True, options={"num_predict": 24, "draft_num_predict": 0})
        ((_, engine),) = llm.runtime.loaded_engines()
        assert engine.config.num_draft == 0  # a load option: the model reloaded without its draft
        assert plain.text == answer.text and answer.text.startswith(" 7, 8, 9")


def test_a_draft_of_another_vocabulary_is_refused(models, gemma3_path, smollm2_path):
    store = Store(models)
    digest = store.blobs.add_file(Path(gemma3_path))
    with pytest.raises(BadRequest, match="DRAFT .*a draft model must share the model's vocabulary"):
        list(create_model(store, CreateSpec(name="bad-draft", source="smollm2", draft=digest)))
    with pytest.raises(BadRequest, match='DRAFT nothing-here: model "nothing-here" not found'):
        list(create_model(store, CreateSpec(name="bad-draft", source="smollm2", draft="nothing-here")))
    assert not store.exists("bad-draft")
    # The engine checks again at load (a GGUF could be swapped under a name): a clear error, nothing leaks.
    with pytest.raises(ModelLoadError, match="vocabulary"):
        Engine(smollm2_path, EngineConfig(num_ctx=256, num_parallel=1, num_draft=4, draft_model=gemma3_path))
