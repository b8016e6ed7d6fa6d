"""``plan_pull``: which source a name means and where the model is stored (no downloads here; the
``test_sources_*`` files pull through each source for real)."""

from __future__ import annotations

import pytest

from lokal.config import Settings
from lokal.errors import BadRequest, InvalidModelName
from lokal.store import Store
from lokal.store.sources import plan_pull, pull
from lokal.store.sources.bundled import BundledSource
from lokal.store.sources.hf import HFSource
from lokal.store.sources.registry import RegistrySource
from lokal.store.sources.url import FileSource, URLSource
from fakes.models import smollm2_gguf

SETTINGS = Settings(environ={}, overrides={"registry": "http://127.0.0.1:9"})


def test_plain_names_go_to_the_configured_registry():
    plan = plan_pull("tinyllama:1.1b", SETTINGS)
    assert isinstance(plan.source, RegistrySource)
    assert plan.source.base_url == "http://127.0.0.1:9"
    assert plan.source.remote.display == "tinyllama:1.1b"
    assert plan.name.display == "tinyllama:1.1b"


def test_a_name_with_a_host_goes_to_that_host_over_https_unless_insecure():
    plan = plan_pull("registry.example.com:5000/team/model:v2", SETTINGS)
    assert plan.source.base_url == "https://registry.example.com:5000"
    assert plan_pull("registry.example.com:5000/team/model:v2", SETTINGS, insecure=True).source.base_url == \
        "http://registry.example.com:5000"


@pytest.mark.parametrize("text, repo, quant", [
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", "bartowski/Llama-3.2-1B-Instruct-GGUF", None),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q8_0", "bartowski/Llama-3.2-1B-Instruct-GGUF", "Q8_0"),
    ("huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:q4_k_m", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "q4_k_m"),
])
def test_hugging_face_names(text, repo, quant):
    plan = plan_pull(text, SETTINGS)
    assert isinstance(plan.source, HFSource)
    assert (plan.source.repo, plan.source.quant) == (repo, quant)
    assert plan.name.is_huggingface


def test_catalog_names_use_the_catalog_source_and_keep_the_name_given():
    plan = plan_pull("deepseek/r1-distill-qwen-1.5b", SETTINGS)
    assert isinstance(plan.source, RegistrySource)
    assert plan.source.remote.display == "deepseek-r1:1.5b-qwen-distill-q4_K_M"
    assert plan.source.base_url == "http://127.0.0.1:9"
    assert plan.name.display == "deepseek/r1-distill-qwen-1.5b:latest"
    assert isinstance(plan_pull("smollm2", SETTINGS).source, BundledSource)
    assert isinstance(plan_pull("gemma3:270m", SETTINGS).source, BundledSource)
    assert plan_pull("phi4:mini-f16", SETTINGS).source.remote.display == "phi4-mini:3.8b-fp16"


def test_urls_and_files():
    plan = plan_pull("https://example.com/files/Tiny-Model.Q8_0.gguf?download=1", SETTINGS)
    assert isinstance(plan.source, URLSource) and plan.name.display == "tiny-model.q8_0:latest"
    plan = plan_pull(str(smollm2_gguf()), SETTINGS, target="mine")
    assert isinstance(plan.source, FileSource) and plan.name.display == "mine:latest"


@pytest.mark.parametrize("text, error", [
    ("", BadRequest),
    ("   ", BadRequest),
    ("bad name!", InvalidModelName),
    ("a/b/c/d", InvalidModelName),
    ("./no-such-file.gguf", BadRequest),
    ("ftp://example.com/x.gguf", InvalidModelName),
])
def test_bad_names_fail_before_any_progress(tmp_path, text, error):
    with pytest.raises(error):
        pull(Store(tmp_path), text, SETTINGS)
    assert not (tmp_path / "blobs").exists()


def test_an_invalid_target_fails_at_once(tmp_path):
    with pytest.raises(InvalidModelName):
        pull(Store(tmp_path), "smollm2", SETTINGS, target="no spaces allowed")
