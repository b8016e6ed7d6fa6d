"""The Dockerfile's steps without a Docker engine: its builder stage's install script into a fresh virtual
environment (llama-cpp-python comes from pip's wheel cache when `make install-dev` built it already), its
BAKE_MODELS step, then `lokal serve` as the image's CMD runs it, answering its HEALTHCHECK command."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from server_fixture import free_port

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def dockerfile_value(pattern: str) -> str:
    match = re.search(pattern, DOCKERFILE.read_text())
    assert match, pattern
    return match.group(1)


def test_the_images_install_steps_build_a_lokal_that_serves_and_passes_its_healthcheck(tmp_path):
    if shutil.which("curl") is None:
        pytest.fail("curl is needed for the HEALTHCHECK command (the image installs it too)")
    venv = tmp_path / "opt-lokal"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_", "PYTHON", "VIRTUAL_ENV"))}
    install = subprocess.run(["sh", str(ROOT / "deploy" / "docker" / "install.sh"), str(venv), str(ROOT)],
                             env=environ, capture_output=True, text=True, timeout=1500)
    assert install.returncode == 0, install.stdout + install.stderr
    assert install.stdout.strip().endswith("lokal version is 0.1.0"), install.stdout

    # The builder's BAKE_MODELS step, then the runtime stage's environment and CMD.
    store = tmp_path / "data" / "models"
    bake_models = dockerfile_value(r"ARG BAKE_MODELS=(\S+)")
    environ.update(LOKAL_MODELS=str(store), HOME=str(tmp_path / "data"))
    for model in bake_models.split():
        pulled = subprocess.run([str(venv / "bin" / "lokal"), "pull", model], env=environ, capture_output=True,
                                text=True, timeout=300)
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    port = free_port()
    environ.update(LOKAL_HOST=f"127.0.0.1:{port}", LOKAL_LOG_FORMAT="json")
    server = subprocess.Popen([str(venv / "bin" / "lokal"), "serve"], env=environ, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    healthcheck = dockerfile_value(r"CMD (curl [^|]+)\|\|").strip().replace(":11434", f":{port}")
    try:
        deadline = time.monotonic() + 120
        while True:
            check = subprocess.run(healthcheck.split(), capture_output=True, text=True, timeout=10)
            if check.returncode == 0:
                break
            assert server.poll() is None and time.monotonic() < deadline, "lokal serve did not come up"
            time.sleep(0.5)
        assert check.stdout.strip() == '{"status":"ok"}'
        models = subprocess.run(["curl", "-fsS", f"http://127.0.0.1:{port}/api/tags"], capture_output=True,
                                text=True, timeout=10)
        assert '"smollm2:latest"' in models.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0].decode(errors="replace")
    assert server.returncode == 0, output
