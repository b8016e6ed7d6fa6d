"""lokal run: one-shot answers and the interactive REPL, on the real bundled SmolLM2.

Greedy answers are checked against the in-process ``LLM`` given the same messages and options.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
from typer.testing import CliRunner

from lokal.cli import app
from lokal.cli.run import ChatSession
from lokal.config import Settings, parse_duration
from lokal.errors import InvalidModelName
from lokal.llm import LLM
from lokal.store.manifests import LAYER_KINDS, Layer
from lokal.store.names import ModelName
from lokal.store.sources import pull
from lokal.store.store import Store

LOKAL = Path(sys.executable).with_name("lokal")
# Small contexts keep answers (which may run to the context's end) short, and one thread per model
# keeps several processes on a shared 2-core box from starving each other.
RUN_ENV = {"LOKAL_CONTEXT_LENGTH": "384", "LOKAL_NUM_PARALLEL": "1", "LOKAL_NUM_THREAD": "1"}
GREEDY = {"temperature": 0, "num_predict": 16}
STATS_LABELS = ["total duration", "load duration", "prompt eval count", "prompt eval duration",
                "prompt eval rate", "eval count", "eval duration", "eval rate"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A store with smollm2 and `greedy`: the same weights with Modelfile PARAMETERs that make
    one-shot runs deterministic (Ollama's run has no sampling flags)."""
    root = tmp_path_factory.mktemp("models")
    store = Store(root)
    for _ in pull(store, "smollm2", Settings(environ={"LOKAL_MODELS": str(root)})):
        pass
    base = store.get("smollm2").manifest
    params = json.dumps(GREEDY).encode()
    layers = [layer for layer in base.layers if layer.kind == "model"]
    layers.append(Layer(LAYER_KINDS["params"], store.blobs.add_bytes(params), len(params)))
    store.write_manifest("greedy", type(base)(config=base.config, layers=layers))
    return root


@pytest.fixture(scope="module")
def reference(models_dir):
    """The in-process LLM on the same store and settings: the independent source of expected answers."""
    settings = Settings(environ={"LOKAL_MODELS": str(models_dir), **RUN_ENV})
    with LLM("smollm2", settings=settings, pull=False) as llm:
        yield llm


def expected_answer(llm: LLM, messages: list[dict[str, str]], options: dict | None = None) -> str:
    return llm.chat(messages, options=options or GREEDY).text


def environment(models_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    env.update({"LOKAL_MODELS": str(models_dir), "HOME": str(home), "TERM": "dumb", **RUN_ENV, **extra})
    return env


def run_lokal(models_dir: Path, home: Path, *args: str, stdin: str | None = None, **extra: str):
    return subprocess.run([str(LOKAL), *args], input=stdin, capture_output=True, text=True, timeout=240,
                          env=environment(models_dir, home, **extra),
                          stdin=subprocess.DEVNULL if stdin is None else None)


def stats(stderr: str) -> dict[str, str]:
    found = {}
    for line in stderr.splitlines():
        label, colon, value = line.partition(":")
        if colon and label in STATS_LABELS:
            found[label] = value.strip()
    return found


# ---- one-shot ---------------------------------------------------------------------------------------------


def test_one_shot_pulls_when_missing_answers_and_prints_verbose_stats(tmp_path):
    empty_store = tmp_path / "models"
    result = run_lokal(empty_store, tmp_path, "run", "smollm2", "Name a colour.", "--verbose",
                       LOKAL_CONTEXT_LENGTH="128")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "pulling manifest" in result.stderr and "success" in result.stderr  # pulled first, offline
    found = stats(result.stderr)
    assert list(found) == STATS_LABELS  # Ollama's order
    assert re.fullmatch(r"\d+ token\(s\)", found["eval count"]) and int(found["eval count"].split()[0]) > 0
    assert re.fullmatch(r"\d+ token\(s\)", found["prompt eval count"])
    assert re.fullmatch(r"\d+\.\d\d tokens/s", found["eval rate"])
    for label in ("total duration", "load duration", "eval duration"):
        assert re.fullmatch(r"[\d.]+(ns|µs|ms|s)|[\dhm.]+s", found[label]), found[label]


def test_one_shot_answer_matches_the_in_process_llm(models_dir, reference, tmp_path):
    prompt = "What is the capital of France?"
    result = run_lokal(models_dir, tmp_path, "run", "greedy", prompt)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected_answer(reference, [{"role": "user", "content": prompt}]).strip()
    assert "total duration" not in result.stderr  # stats only with --verbose


def test_piped_stdin_comes_before_the_prompt_words(models_dir, reference, tmp_path):
    piped = "The sky is blue because of Rayleigh scattering.\n"
    result = run_lokal(models_dir, tmp_path, "run", "greedy", "Summarize:", stdin=piped)
    assert result.returncode == 0, result.stderr
    messages = [{"role": "user", "content": piped + " " + "Summarize:"}]
    assert result.stdout.strip() == expected_answer(reference, messages).strip()
    only_stdin = run_lokal(models_dir, tmp_path, "run", "greedy", stdin="What is 2 + 2?")
    assert only_stdin.returncode == 0
    expected = expected_answer(reference, [{"role": "user", "content": "What is 2 + 2?"}])
    assert only_stdin.stdout.strip() == expected.strip()


def test_format_json_constrains_the_answer(models_dir, tmp_path):
    result = run_lokal(models_dir, tmp_path, "run", "greedy", "Describe a cat as JSON.", "--format", "json",
                       "--keepalive", "1m", "--nowordwrap")
    assert result.returncode == 0, result.stderr
    assert result.stdout.lstrip().startswith("{")


@pytest.mark.parametrize("args, message", [
    (["run", "bad name!", "hi"], None),
    (["run", "smollm2", "hi", "--format", "xml"], "Error: invalid format 'xml': only 'json' is supported\n"),
    (["run", "smollm2", "hi", "--keepalive", "soon"], None),
])
def test_bad_run_arguments_are_clear_errors(models_dir, monkeypatch, args, message):
    monkeypatch.setenv("LOKAL_MODELS", str(models_dir))
    if message is None:  # the message the validator itself gives
        with pytest.raises((InvalidModelName, ValueError)) as expected:
            parse_duration(args[-1]) if "--keepalive" in args else ModelName.parse(args[1])
        message = f"Error: {getattr(expected.value, 'message', expected.value)}\n"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr == message


def test_unknown_model_that_cannot_be_pulled(tmp_path):
    result = run_lokal(tmp_path / "models", tmp_path, "run", "nothere", "hi", LOKAL_REGISTRY="http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("Error: pull model manifest")
    assert "Traceback" not in result.stderr and result.stdout == ""


# ---- Ctrl-C cancels the generation ------------------------------------------------------------------------


class _InterruptOnFirstWrite:
    """stdout that delivers a real SIGINT to this process when the first piece of the answer arrives."""

    def __init__(self):
        self.written: list[str] = []

    def write(self, text: str) -> int:
        self.written.append(text)
        if len(self.written) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt surfaces right here
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture
def ctrl_c_raises():
    """Python's own Ctrl-C handler for the test: a suite started in the background (``make test &``)
    inherits SIGINT ignored, and then Ctrl-C would do nothing, as it does for any background job."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_the_answer_frees_the_slot_and_keeps_the_session(reference, monkeypatch, ctrl_c_raises):
    session = ChatSession(reference)
    session.options = {"temperature": 0}
    interrupted = _InterruptOnFirstWrite()
    monkeypatch.setattr(sys, "stdout", interrupted)
    assert session.answer("Write a very long story about a dragon and a knight.") is False
    monkeypatch.undo()
    assert session.history == []  # the cancelled exchange is not part of the conversation
    engine = reference.runtime.loaded_engine("smollm2")
    for _ in range(200):  # the cancel reaches the engine thread asynchronously
        if engine.stats().num_busy == 0:
            break
        time.sleep(0.05)
    assert engine.stats().num_busy == 0 and engine.stats().num_waiting == 0
    session.options = dict(GREEDY)
    assert session.answer("Hi") is True
    assert len(session.history) == 2


# ---- the REPL in a pseudo-terminal ------------------------------------------------------------------------


def spawn_repl(models_dir: Path, home: Path, model: str = "smollm2") -> pexpect.spawn:
    # SIGINT back to its default in the child, as in a terminal, even when the suite runs as a background job
    child = pexpect.spawn(str(LOKAL), ["run", model], env=environment(models_dir, home), encoding="utf-8",
                          timeout=180, dimensions=(40, 200),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child.expect_exact(">>> ")
    return child


def send(child: pexpect.spawn, line: str, prompt: str = ">>> ") -> str:
    """Send one line; return what the REPL printed before the next prompt (echo removed, \\r\\n → \\n)."""
    child.sendline(line)
    child.expect_exact(line + "\r\n")
    child.expect_exact(prompt)
    return child.before.replace("\r\n", "\n")


def test_repl_session(models_dir, reference, tmp_path):
    child = spawn_repl(models_dir, tmp_path)
    try:
        assert send(child, "/set parameter temperature 0").strip() == "Set parameter 'temperature' to '0'"
        assert send(child, "/set parameter num_predict 16").strip() == "Set parameter 'num_predict' to '16'"
        system = "You are a geography teacher. Answer briefly."
        assert send(child, f"/set system {system}").strip() == "Set system message."

        shown = send(child, "/show parameters")
        assert "User defined parameters:" in shown
        assert re.search(r"^temperature +0$", shown, re.M) and re.search(r"^num_predict +16$", shown, re.M)
        assert send(child, "/show system").strip() == system
        info = send(child, "/show info")
        assert re.search(r"^ +architecture +llama$", info, re.M) and "Capabilities" in info

        # A multi-line message between triple quotes.
        send(child, '"""What is', prompt="... ")
        send(child, "the capital of France?", prompt="... ")
        first = send(child, '"""').strip()
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": "What is\nthe capital of France?"}]
        assert first and first == expected_answer(reference, messages).strip()

        # The next turn carries the conversation.
        second = send(child, "And of Germany?").strip()
        messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And of Germany?"}]
        assert second == expected_answer(reference, messages).strip()

        assert send(child, "/clear").strip() == "Cleared session context"
        fresh = send(child, "And of Germany?").strip()
        assert fresh == expected_answer(reference, [{"role": "system", "content": system},
                                                    {"role": "user", "content": "And of Germany?"}]).strip()

        assert send(child, "/set format json").strip() == "Set format to 'json' mode."
        assert send(child, "Describe a cat.").lstrip().startswith("{")
        assert send(child, "/unset format").strip() == "Disabled format."

        assert send(child, "/show license").strip() == "Apache-2.0"
        assert "<|im_start|>" in send(child, "/show template")
        assert send(child, "/show modelfile").startswith('# Modelfile generated by "lokal show"')

        assert send(child, "/set parameter nonsense 1").strip() == "Error: unknown option 'nonsense'"
        assert send(child, "/foo").strip() == "Unknown command '/foo'. Type /? for help"
        assert "/set" in send(child, "/?") and "/show" in send(child, "/help")

        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    history = (tmp_path / ".lokal" / "history").read_text()
    assert "/set parameter temperature 0" in history and "And of Germany?" in history


def test_repl_ctrl_c_and_ctrl_d(models_dir, tmp_path):
    child = spawn_repl(models_dir, tmp_path)
    try:
        send(child, "/set parameter temperature 0")
        question = "Write a very long story about a dragon and a knight."
        child.sendline(question)
        child.expect_exact(question + "\r\n")
        child.expect(r"\S")  # the answer has started
        child.sendintr()
        child.expect_exact(">>> ")  # the answer stopped, the session goes on
        send(child, "/set parameter num_predict 8")
        assert send(child, "Hi").strip()
        child.sendintr()  # at an empty prompt: a hint, not an exit
        child.expect_exact("Use Ctrl + d or /bye to exit.")
        child.expect_exact(">>> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


THINK_TEMPLATE = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                  "<|im_start|>assistant\n{{ if .Think }}<think>\n{{ end }}")


def test_think_and_hidethinking(models_dir, tmp_path):
    """A Modelfile TEMPLATE over SmolLM2 that opens a think block when asked: --think prints the reasoning
    as Ollama's CLI does, --hidethinking only the answer; both match the in-process LLM's split."""
    store = Store(models_dir)
    greedy = store.get("greedy").manifest
    template = THINK_TEMPLATE.encode()
    layers = list(greedy.layers) + [Layer(LAYER_KINDS["template"], store.blobs.add_bytes(template), len(template))]
    store.write_manifest("thinker", type(greedy)(config=greedy.config, layers=layers))
    settings = Settings(environ={"LOKAL_MODELS": str(models_dir), **RUN_ENV})
    prompt = "What is 2 + 2?"
    with LLM("thinker", settings=settings, pull=False) as llm:
        expected = llm.chat([{"role": "user", "content": prompt}], think=True)
    assert expected.thinking
    shown = run_lokal(models_dir, tmp_path, "run", "thinker", "--think", prompt)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Thinking...\n" + expected.thinking)
    hidden = run_lokal(models_dir, tmp_path, "run", "thinker", "--hidethinking", prompt)
    assert hidden.returncode == 0, hidden.stderr
    assert "Thinking..." not in hidden.stdout and hidden.stdout.strip() == expected.text.strip()
    refused = run_lokal(models_dir, tmp_path, "run", "greedy", "--think", prompt)
    assert refused.returncode != 0 and "thinking" in refused.stderr
