"""A live ``lokal serve`` for the server tests: a subprocess on a free loopback port over a temp store with
the bundled SmolLM2 pulled, started once per test module and stopped with SIGTERM. Also the independent
reference the tests compare answers with: llama-cpp-python's own high-level ``Llama`` on the same GGUF.

Import the fixtures into a test module: ``from server_fixture import live_server, reference  # noqa: F401``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lokal.engine.cpu_build import default_flash_attention
from lokal.engine.llamacpp import extra_buffers_are_safe

MODEL = "smollm2"
# Each test asks for a few tokens at temperature 0: deterministic and cheap on a shared 2-core machine.
NUM_PREDICT = 12
GREEDY = {"temperature": 0, "num_predict": NUM_PREDICT}
# How long a server may take to start answering (imports + binding; models load on first use).
STARTUP_SECONDS = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    process: subprocess.Popen
    port: int
    models: Path
    log_path: Path
    scheme: str = "http"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"lokal serve ignored SIGTERM for {timeout}s\n{self.log()}") from None
        return self.process.returncode


def pull_models(root: Path, *names: str) -> Path:
    from lokal.config import Settings
    from lokal.store.sources import pull
    from lokal.store.store import Store

    settings = Settings(environ={"LOKAL_MODELS": str(root)})
    store = Store(root)
    for name in names:
        for _ in pull(store, name, settings):
            pass
    return root


def start_server(models: Path, log_path: Path, *, scheme: str = "http", verify: object = True, **env: str
                 ) -> LiveServer:
    """``scheme="https"`` with ``verify`` (an ssl context trusting the test CA) for a server with TLS."""
    port = free_port()
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("LOKAL_", "OLLAMA_"))}
    environ.update({"LOKAL_HOST": f"127.0.0.1:{port}", "LOKAL_MODELS": str(models), "LOKAL_NUM_PARALLEL": "4",
                    "LOKAL_CONTEXT_LENGTH": "1024", "PYTHONUNBUFFERED": "1"})
    environ.update({f"LOKAL_{key.upper()}": value for key, value in env.items()})
    log_file = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "-m", "lokal.server.serve"], env=environ, stdout=log_file,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log_file.close()
    server = LiveServer(process, port, models, log_path, scheme)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"lokal serve exited with {process.returncode}\n{server.log()}")
        try:
            if httpx.get(server.url + "/", timeout=1, verify=verify).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.stop()
    raise AssertionError(f"lokal serve did not answer within {STARTUP_SECONDS}s\n{server.log()}")


@pytest.fixture(scope="module")
def model_store(tmp_path_factory) -> Path:
    return pull_models(tmp_path_factory.mktemp("models"), MODEL)


@pytest.fixture(scope="module")
def live_server(request, model_store, tmp_path_factory):
    """A test module may set ``SERVER_ENV = {"context_length": "512", …}`` (LOKAL_* without the prefix)."""
    env = getattr(request.module, "SERVER_ENV", {})
    server = start_server(model_store, tmp_path_factory.mktemp("log") / "serve.log", **env)
    yield server
    status = server.stop()
    assert status == 0, f"lokal serve exited with {status} after SIGTERM\n{server.log()}"


_quiet_callback = None


def _quiet_llama() -> None:
    global _quiet_callback
    import llama_cpp

    if _quiet_callback is None:
        _quiet_callback = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_quiet_callback, ctypes.c_void_p(0))


class Reference:
    """Greedy answers from llama-cpp-python's high-level API: its own tokenizing, its own Jinja chat
    formatter, its own sampling loop; nothing of lokal's."""

    def __init__(self, model_path: str, lora_path: str | None = None, logits_all: bool = False):
        import llama_cpp
        import llama_cpp.llama_cpp as low_level

        _quiet_llama()
        # ggml's AMX buffers fault in VMs that advertise AMX without allowing it (lokal's engine turns them
        # off the same way); the high-level API has no switch for them, so its defaults are adjusted.
        default_params = low_level.llama_model_default_params

        def safe_default_params():
            params = default_params()
            params.use_extra_bufts = extra_buffers_are_safe()
            return params

        low_level.llama_model_default_params = safe_default_params
        try:
            # logits_all: for logprobs. Flash attention as lokal's engine decides it: the kernels round differently.
            self.llama = llama_cpp.Llama(model_path=model_path, lora_path=lora_path, n_ctx=1024, n_threads=2,
                                         logits_all=logits_all, flash_attn=default_flash_attention(), verbose=False)
        finally:
            low_level.llama_model_default_params = default_params

    def complete(self, prompt: str, num_predict: int = NUM_PREDICT) -> str:
        result = self.llama.create_completion(prompt, max_tokens=num_predict, temperature=0.0)
        return result["choices"][0]["text"]

    def chat(self, messages: list[dict], num_predict: int = NUM_PREDICT) -> str:
        result = self.llama.create_chat_completion(messages=messages, max_tokens=num_predict, temperature=0.0)
        return result["choices"][0]["message"]["content"]

    def count_tokens(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode(), add_bos=False, special=False))


@pytest.fixture(scope="module")
def reference(smollm2_path) -> Reference:
    return Reference(smollm2_path)
