"""``lokal serve`` as a process (binding, a taken port, SIGTERM in the middle of a stream) and the ``ps`` /
``stop`` commands against a live server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import httpx
import pytest
import typer
from server_fixture import MODEL, free_port, live_server, model_store, start_server  # noqa: F401
from typer.testing import CliRunner

from lokal.cli.serve import processor, register, until


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_serve_says_clearly_when_the_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "lokal.server.serve"], capture_output=True, text=True,
                                timeout=120, env={"LOKAL_HOST": f"127.0.0.1:{port}", "LOKAL_MODELS": str(tmp_path),
                                                  "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in result.stderr and "LOKAL_HOST" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_ends_running_streams_with_an_error_line_and_exits_cleanly(model_store, tmp_path):
    server = start_server(model_store, tmp_path / "serve.log")
    try:
        body = {"model": MODEL, "prompt": "1, 2, 3,", "raw": True,
                "options": {"temperature": 0, "num_predict": 100000, "num_ctx": 8192}}
        with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=120) as response:
            lines = response.iter_lines()
            first = json.loads(next(lines))
            assert first["done"] is False
            server.process.terminate()  # SIGTERM
            rest = [json.loads(line) for line in lines]
        assert rest and "shutting down" in rest[-1]["error"], rest[-3:]
        assert not any(item.get("done") for item in rest)
        assert server.process.wait(60) == 0
        assert "listening on http://127.0.0.1:" in server.log()
    finally:
        server.stop()


def test_a_full_queue_is_a_503_with_retry_after(model_store, tmp_path):
    server = start_server(model_store, tmp_path / "serve.log", max_queue="0")
    try:
        ollama = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": "hi"}, timeout=60)
        assert ollama.status_code == 503 and ollama.headers["Retry-After"] == "1"
        assert "busy" in ollama.json()["error"]
        openai = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        assert openai.status_code == 503 and openai.json()["error"]["type"] == "server_busy"
        assert httpx.get(server.url + "/api/health", timeout=10).json() == {"status": "ok"}
    finally:
        assert server.stop() == 0


def test_serve_help_lists_the_environment(cli):
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    assert "LOKAL_HOST" in result.output and "LOKAL_KEEP_ALIVE" in result.output


def test_ps_and_stop(cli, live_server, monkeypatch):
    monkeypatch.setenv("LOKAL_HOST", live_server.host)
    httpx.post(live_server.url + "/api/generate", json={"model": MODEL, "keep_alive": "10m"}, timeout=120)
    listed = CliRunner().invoke(cli, ["ps"])
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "ENGINE", "UNTIL"]
    assert row.startswith("smollm2:latest") and "100% CPU" in row and "1024" in row and "from now" in row
    assert "gguf/cpu/batch" in row
    stopped = CliRunner().invoke(cli, ["stop", MODEL])
    assert stopped.exit_code == 0, stopped.output
    assert httpx.get(live_server.url + "/api/ps").json()["models"] == []
    assert CliRunner().invoke(cli, ["ps"]).output.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "ENGINE", "UNTIL"]


def test_stop_of_a_model_that_is_not_loaded_fails(cli, live_server, monkeypatch):
    monkeypatch.setenv("LOKAL_HOST", live_server.host)
    result = CliRunner().invoke(cli, ["stop", "not-loaded"])
    assert result.exit_code == 1 and "couldn't find model" in result.output


def test_ps_without_a_server_says_so(cli, monkeypatch):
    monkeypatch.setenv("LOKAL_HOST", f"127.0.0.1:{free_port()}")
    result = CliRunner().invoke(cli, ["ps"])
    assert result.exit_code != 0
    assert "no lokal server answers" in str(result.exception) + result.output


def test_processor_and_until_columns():
    assert processor(1000, 0) == "100% CPU"
    assert processor(1000, 1000) == "100% GPU"
    assert processor(1000, 250) == "75%/25% CPU/GPU"
    assert until(None) == "Forever"
    assert until("9999-12-31T23:59:59+00:00") == "Forever"
    assert until("2000-01-01T00:00:00Z") == "Stopping..."


def test_model_commands_go_through_a_running_server(live_server, tmp_path, monkeypatch):
    """With a server at LOKAL_HOST the CLI is its client: an empty local store does not matter, and what
    the CLI does shows up in the server."""
    from lokal.cli import app

    monkeypatch.setenv("LOKAL_HOST", live_server.host)
    monkeypatch.setenv("LOKAL_MODELS", str(tmp_path / "empty-local-store"))
    runner = CliRunner()

    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[1].startswith("smollm2:latest")
    shown = runner.invoke(app, ["show", MODEL])
    assert shown.exit_code == 0 and "llama" in shown.output and "134.52M" in shown.output

    assert runner.invoke(app, ["cp", MODEL, "via-cli"]).exit_code == 0
    names = [m["name"] for m in httpx.get(live_server.url + "/api/tags").json()["models"]]
    assert "via-cli:latest" in names
    assert runner.invoke(app, ["rm", "via-cli"]).exit_code == 0
    names = [m["name"] for m in httpx.get(live_server.url + "/api/tags").json()["models"]]
    assert "via-cli:latest" not in names
    missing = runner.invoke(app, ["show", "nothere"])
    assert missing.exit_code == 1 and 'model "nothere" not found' in missing.output

    pulled = runner.invoke(app, ["pull", MODEL])
    assert pulled.exit_code == 0 and "success" in pulled.output

    httpx.post(live_server.url + "/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=60)
    answered = runner.invoke(app, ["run", MODEL, "Say hello.", "--keepalive", "10m"])
    assert answered.exit_code == 0, answered.output
    assert answered.output.strip()
    assert [m["name"] for m in httpx.get(live_server.url + "/api/ps").json()["models"]] == ["smollm2:latest"]
    assert not (tmp_path / "empty-local-store").exists() or not any((tmp_path / "empty-local-store").iterdir())
