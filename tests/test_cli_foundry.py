"""Foundry Local's verbs on the command line that need no model: cache, models info, convert's refusals,
service status without a server."""

from __future__ import annotations

from typer.testing import CliRunner

from lokal.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_cache_location_and_ls(tmp_path, monkeypatch):
    monkeypatch.setenv("LOKAL_MODELS", str(tmp_path))
    monkeypatch.setenv("LOKAL_HOST", "127.0.0.1:1")
    assert invoke("cache", "location").output.strip() == str(tmp_path)
    listed = invoke("cache", "ls")
    assert listed.exit_code == 0 and listed.output.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    missing = invoke("cache", "remove", "nothing-here")
    assert missing.exit_code == 1 and "not found" in missing.output


def test_models_info_describes_catalog_variants(tmp_path, monkeypatch):
    monkeypatch.setenv("LOKAL_MODELS", str(tmp_path))
    monkeypatch.setenv("LOKAL_HOST", "127.0.0.1:1")
    result = invoke("models", "info", "Phi-4-mini-instruct-cuda-gpu")
    assert result.exit_code == 0, result.output
    assert "phi4:mini-onnx-int4-cuda" in result.output and "onnx" in result.output and "gpu" in result.output


def test_convert_refuses_bad_arguments_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("LOKAL_MODELS", str(tmp_path))
    assert "only onnx" in invoke("convert", "smollm2", "--to", "tflite").output
    bad = invoke("convert", "smollm2", "--precision", "int3")
    assert bad.exit_code == 1 and "precision must be one of int4, int8, fp16, fp32" in bad.output
    missing = invoke("convert", "no-such-model")
    assert missing.exit_code == 1 and "not found" in missing.output


def test_service_status_without_a_server(tmp_path, monkeypatch):
    monkeypatch.setenv("LOKAL_HOST", "127.0.0.1:1")
    monkeypatch.setenv("LOKAL_MODELS", str(tmp_path))
    result = invoke("service", "status")
    assert result.exit_code == 1 and "not running" in result.output
    assert "no background server" in invoke("service", "stop").output

