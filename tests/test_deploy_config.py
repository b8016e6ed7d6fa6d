"""Deployment configs (Foundry Local's production.json): validation that names the JSON path and the allowed
values, each field's effect observed on the real engine or server, precedence flags > env > file > defaults,
`lokal init` and `lokal deploy --dry-run`."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from typer.testing import CliRunner

from lokal.config import Settings
from lokal.deploy_config import STARTER, load, parse
from lokal.errors import ConfigError
from lokal.runtime import Runtime
from lokal.store.sources import pull
from lokal.store.store import Store
from lokal.types import Done, GenerateRequest

FULL = {
    "deployment": {"model": "smollm2",
                   "hardware": {"preferred": "npu", "fallback": ["gpu", "cpu"]},
                   "optimization": {"quantization": "dynamic", "batch_size": 64, "max_context": 256},
                   "api": {"port": 8089, "openai_compatible": True}},
    "performance": {"batch_processing": True, "parallel_requests": 3,
                    "memory_optimization": {"enable_kv_cache": True, "max_cache_size": "2GB"},
                    "hardware_scheduling": {"enable_dynamic_batching": True, "max_batch_size": 16}},
}


def with_fields(**changes) -> dict:
    data = json.loads(json.dumps(FULL))
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return data


def write(tmp_path, data, name="deploy.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_every_field_maps_to_a_setting(tmp_path):
    settings = Settings(environ={"LOKAL_CONFIG": str(write(tmp_path, FULL))})
    assert settings.host == ("127.0.0.1", 8089)
    assert settings.num_parallel == 3 and settings.num_batch == 64 and settings.context_length == 256
    assert settings.device == ["npu", "gpu", "cpu"] and settings.quantization == "dynamic"
    assert settings.prefix_reuse is True and settings.prompt_cache == 1907  # 2 GB in MiB
    assert settings.openai_api is True
    assert settings.source("LOKAL_NUM_PARALLEL") == "file"


@pytest.mark.parametrize("changes, setting, value", [
    ({"performance__parallel_requests": 6}, "num_parallel", 6),
    ({"performance__hardware_scheduling": {"enable_dynamic_batching": False, "max_batch_size": 16}}, "num_parallel", 1),
    ({"performance__batch_processing": False}, "num_parallel", 1),
    ({"performance__hardware_scheduling": {"enable_dynamic_batching": True, "max_batch_size": 2}}, "num_parallel", 2),
    ({"performance__memory_optimization": {"enable_kv_cache": False, "max_cache_size": 0}}, "prefix_reuse", False),
    ({"performance__memory_optimization": {"enable_kv_cache": True, "max_cache_size": "256MiB"}}, "prompt_cache", 256),
    ({"deployment__api": {"port": 9001, "openai_compatible": False}}, "openai_api", False),
    ({"deployment__optimization": {"quantization": "q8_0", "batch_size": 32}}, "quantization", "q8_0"),
    ({"deployment__hardware": {"preferred": "cpu", "fallback": []}}, "device", ["cpu"]),
])
def test_each_field_changes_its_setting(tmp_path, changes, setting, value):
    settings = Settings(environ={"LOKAL_CONFIG": str(write(tmp_path, with_fields(**changes)))})
    assert getattr(settings, setting) == value


@pytest.mark.parametrize("changes, message", [
    ({"deployment__hardware": {"preferred": "tpu"}}, "deployment.hardware.preferred: 'tpu' is not allowed; "
                                                     "allowed values: 'cpu', 'gpu' or 'npu'"),
    ({"deployment__hardware": {"fallback": ["gpu", "fpga"]}}, "deployment.hardware.fallback[1]: 'fpga' is not allowed"),
    ({"deployment__optimization": {"quantization": "q3"}}, "deployment.optimization.quantization: 'q3' is not "
                                                           "allowed; allowed values: 'dynamic'"),
    ({"deployment__api": {"port": 70000}}, "deployment.api.port: 70000: input should be less than or equal to 65535"),
    ({"performance__parallel_requests": 0}, "performance.parallel_requests: 0: input should be greater than"),
    ({"performance__turbo": True}, "performance.turbo: unknown field"),
    ({"performance__memory_optimization": {"max_cache_size": "lots"}}, "max_cache_size: 'lots' is not a size"),
])
def test_validation_errors_name_the_path_and_the_allowed_values(changes, message):
    with pytest.raises(ConfigError) as caught:
        parse(with_fields(**changes))
    assert message in caught.value.message


def test_yaml_and_unreadable_files(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(FULL))
    assert load(path).performance.parallel_requests == 3
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.json")


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path):
    path = str(write(tmp_path, FULL))
    assert Settings(environ={"LOKAL_CONFIG": path}).num_parallel == 3  # file over default 4
    assert Settings(environ={}).num_parallel == 4 and Settings(environ={}).source("LOKAL_NUM_PARALLEL") == "default"
    env = Settings(environ={"LOKAL_CONFIG": path, "OLLAMA_NUM_PARALLEL": "5"})
    assert (env.num_parallel, env.source("LOKAL_NUM_PARALLEL")) == (5, "OLLAMA_NUM_PARALLEL")
    env = Settings(environ={"LOKAL_CONFIG": path, "LOKAL_NUM_PARALLEL": "7"})
    assert env.num_parallel == 7
    flag = Settings(environ={"LOKAL_CONFIG": path, "LOKAL_NUM_PARALLEL": "7"}, overrides={"num_parallel": 2})
    assert (flag.num_parallel, flag.source("LOKAL_NUM_PARALLEL")) == (2, "flag")
    assert flag.context_length == 256  # untouched fields still come from the file


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for _ in pull(Store(root), "smollm2", Settings(environ={"LOKAL_MODELS": str(root)})):
        pass
    return root


async def _generate(runtime: Runtime, prompt: str) -> Done:
    done = None
    async for event in runtime.generate(GenerateRequest(model="smollm2", prompt=prompt, raw=True,
                                                        options={"temperature": 0, "num_predict": 2})):
        if isinstance(event, Done):
            done = event
    assert done is not None
    return done


def test_engine_follows_the_file(store_root, tmp_path):
    """parallel_requests, max_batch_size, batch_size, max_context, max_cache_size, enable_kv_cache observed
    on the loaded engine; enable_kv_cache false recomputes a repeated prompt in full."""
    prompt = "The quick brown fox jumps over the lazy dog. " * 4

    async def scenario(data):
        environ = {"LOKAL_MODELS": str(store_root), "LOKAL_CONFIG": str(write(tmp_path, data))}
        runtime = Runtime(Settings(environ=environ))
        try:
            first = await _generate(runtime, prompt)
            second = await _generate(runtime, prompt)
            engine = runtime.loaded_engine("smollm2")
            return engine.config, engine.stats(), first, second
        finally:
            await runtime.close()

    config, stats, first, second = asyncio.run(scenario(with_fields(
        performance__hardware_scheduling={"enable_dynamic_batching": True, "max_batch_size": 2})))
    assert (config.num_parallel, stats.num_slots) == (2, 2)  # parallel_requests 3 capped by max_batch_size 2
    assert (config.num_batch, config.num_ctx) == (64, 256)
    assert config.prompt_cache == 1907 << 20 and config.prefix_reuse
    assert second.prompt_eval_count < first.prompt_eval_count  # the cached prefix is reused
    config, stats, first, second = asyncio.run(scenario(with_fields(
        performance__memory_optimization={"enable_kv_cache": False, "max_cache_size": "1GB"},
        performance__hardware_scheduling={"enable_dynamic_batching": False})))
    assert (config.num_parallel, stats.num_slots) == (1, 1) and not config.prefix_reuse
    assert second.prompt_eval_count == first.prompt_eval_count  # nothing reused


def test_server_listens_on_the_files_port_without_v1(store_root, tmp_path):
    """port is the port and openai_compatible false removes /v1 (the server is started with no LOKAL_HOST,
    so the file decides)."""
    import os
    import subprocess
    import sys
    import time

    from server_fixture import free_port

    port = free_port()
    path = write(tmp_path, with_fields(deployment__api={"port": port, "openai_compatible": False}))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    environ.update(LOKAL_MODELS=str(store_root), LOKAL_CONFIG=str(path))
    process = subprocess.Popen([sys.executable, "-m", "lokal.server.serve"], env=environ,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(url + "/api/tags").status_code == 200
        assert httpx.get(url + "/v1/models").status_code == 404
        assert httpx.post(url + "/v1/chat/completions", json={"model": "smollm2", "messages": []}).status_code == 404
    finally:
        process.terminate()
        process.wait(30)


def test_init_writes_a_commented_starter_that_deploy_validates(tmp_path, monkeypatch, store_root):
    from lokal.cli import app

    monkeypatch.setenv("LOKAL_MODELS", str(tmp_path / "store"))
    monkeypatch.setenv("LOKAL_HOST", "127.0.0.1:1")  # no server there: the CLI works on the store
    config = tmp_path / "lokal.json"
    result = CliRunner().invoke(app, ["init", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "store").is_dir() and config.read_text() == STARTER and "//" in STARTER
    assert load(config).deployment.model == "smollm2"
    again = CliRunner().invoke(app, ["init", "--config", str(config)])
    assert again.exit_code == 1 and "--force" in again.output
    monkeypatch.delenv("LOKAL_HOST")
    dry = CliRunner().invoke(app, ["deploy", "--config", str(config), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "is valid" in dry.output and "LOKAL_NUM_PARALLEL=4  (file)" in dry.output
    assert "model: smollm2:135m-q4_1" in dry.output
    assert not any((tmp_path / "store").rglob("manifests/*/*/*/*"))  # a dry run pulls nothing
    bad = write(tmp_path, with_fields(deployment__hardware={"preferred": "tpu"}), "bad.json")
    refused = CliRunner().invoke(app, ["deploy", "--config", str(bad), "--dry-run"])
    assert refused.exit_code == 1 and "deployment.hardware.preferred" in refused.output


def _deploy(config_path, models, log_path):
    """`lokal deploy --config FILE` as a user runs it: a subprocess with no LOKAL_*/OLLAMA_* environment, so the
    file decides. Returns the process once /ready answers 200 (the file's model pulled and loaded)."""
    import os
    import subprocess
    import sys
    import time

    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    environ.update(LOKAL_MODELS=str(models), PYTHONUNBUFFERED="1")
    log_file = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "-m", "lokal", "deploy", "--config", str(config_path)], env=environ,
                               stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log_file.close()
    url = f"http://127.0.0.1:{json.loads(config_path.read_text())['deployment']['api']['port']}"
    deadline = time.monotonic() + 600  # a generous bound on a shared machine, not a measurement
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"lokal deploy exited with {process.returncode}\n{log_path.read_text()}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"lokal deploy was not ready in time\n{log_path.read_text()}")


def _stop(process, log_path) -> None:
    import signal

    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, log_path.read_text()


def test_deploy_pulls_the_missing_model_and_serves_with_the_files_settings(tmp_path):
    """A fresh store: deploy pulls the file's model (with progress), loads it at start, and serves on the file's
    port with its settings: parallel_requests and max_context in /api/ps, openai_compatible false → no /v1."""
    from server_fixture import free_port

    path = write(tmp_path, with_fields(deployment__api={"port": free_port(), "openai_compatible": False},
                                       deployment__hardware={"preferred": "cpu", "fallback": []}))
    log_path = tmp_path / "deploy.log"
    process, url = _deploy(path, tmp_path / "store", log_path)
    try:
        [model] = httpx.get(url + "/api/ps").json()["models"]
        assert model["name"] == "smollm2:135m-q4_1" and model["format"] == "gguf"
        assert (model["num_parallel"], model["context_length"]) == (3, 256)  # parallel_requests, max_context
        assert httpx.get(url + "/v1/models").status_code == 404
        reply = httpx.post(url + "/api/generate", timeout=120, json={
            "model": "smollm2:135m-q4_1", "prompt": "1, 2, 3, 4, 5, 6,", "raw": True, "stream": False,
            "options": {"temperature": 0, "num_predict": 3}}).json()
        assert reply["response"].startswith(" 7") and not reply.get("load_duration")  # loaded at start
    finally:
        _stop(process, log_path)
    log = log_path.read_text()
    assert "pulling smollm2:135m-q4_1" in log and "success" in log
    assert Store(tmp_path / "store").exists("smollm2:135m-q4_1")


def test_deploy_picks_the_onnx_variant_the_file_asks_for(onnx_store, tmp_path):
    """quantization int4 on the CPU picks the catalog's ONNX variant of smollm2 (converted by the session's
    fixture through the same pull deploy calls); it is served beside /v1, batching parallel_requests 3."""
    from server_fixture import free_port

    data = with_fields(deployment__api={"port": free_port(), "openai_compatible": True},
                       deployment__hardware={"preferred": "cpu", "fallback": []},
                       deployment__optimization={"quantization": "int4", "batch_size": 64, "max_context": 512})
    path = write(tmp_path, data)
    log_path = tmp_path / "deploy.log"
    process, url = _deploy(path, onnx_store, log_path)
    try:
        [model] = httpx.get(url + "/api/ps").json()["models"]
        assert (model["name"], model["format"], model["device"]) == ("smollm2:135m-onnx-int4-cpu", "onnx", "cpu")
        assert (model["num_parallel"], model["concurrency"]) == (3, "batch")  # parallel_requests
        assert httpx.get(url + "/v1/models").status_code == 200
    finally:
        _stop(process, log_path)
    assert "pulling" not in log_path.read_text()  # already in the store: nothing to pull or convert
