"""Pulls of ``hf.co/<owner>/<repo>[:<quant>]`` through huggingface_hub against a local fake hub."""

from __future__ import annotations

import json

import pytest
from gguf import LlamaFileType

from lokal.config import Settings
from lokal.errors import ModelNotFound, PullError
from lokal.store import Store
from lokal.store.sources import pull
from lokal.store.sources.hf import choose_gguf, has_quant
from fakes.hf_hub import COMMIT, FakeHub
from fakes.models import file_type_name, gguf_header_values, sha256_of, smollm2_gguf, tiny_gguf
from fakes.server import Payload

REPO = "bartowski/SmolLM2-135M-Instruct-GGUF"
Q4_1 = "SmolLM2-135M-Instruct-Q4_1.gguf"
Q8_0 = "SmolLM2-135M-Instruct-Q8_0.gguf"


@pytest.fixture(scope="module")
def q8_file(tmp_path_factory):
    return tiny_gguf(tmp_path_factory.mktemp("hf") / Q8_0, file_type=LlamaFileType.MOSTLY_Q8_0)


@pytest.fixture
def hub(monkeypatch, q8_file):
    with FakeHub() as server:
        server.add_file(REPO, Q4_1, Payload(path=smollm2_gguf()))
        server.add_file(REPO, Q8_0, Payload(path=q8_file))
        server.add_file(REPO, "README.md", Payload(data=b"# SmolLM2 GGUF\n"))
        server.licenses[REPO] = "apache-2.0"
        server.add_file("someone/safetensors-only", "model.safetensors", Payload(data=b"\0" * 64))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        yield server


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "models")


def settings() -> Settings:
    return Settings(environ={})


def test_latest_picks_the_preferred_quant_and_stores_a_proper_model(hub, store):
    name = f"hf.co/{REPO}"
    events = list(pull(store, name, settings()))

    expected = sha256_of(smollm2_gguf())  # no Q4_K_M here: Q4_1 is next in the preference order
    entry = store.get(name)
    assert entry.name.display == f"hf.co/{REPO}:latest"
    assert entry.manifest.layer("model").digest == expected
    assert sha256_of(store.blobs.path(expected)) == expected
    config = json.loads(store.blobs.path(entry.manifest.config.digest).read_bytes())
    architecture = gguf_header_values(smollm2_gguf(), {"general.architecture"})["general.architecture"]
    assert config["model_format"] == "gguf" and config["model_family"] == architecture
    assert config["file_type"] == file_type_name(smollm2_gguf())
    assert config["rootfs"]["diff_ids"] == [layer.digest for layer in entry.manifest.layers]
    assert store.layer_text(entry, "license") == "apache-2.0"
    assert events[0].status == "pulling manifest" and events[-1].status == "success"
    model_events = [e for e in events if e.digest == expected]
    assert model_events[-1].completed == model_events[-1].total == smollm2_gguf().stat().st_size
    # huggingface_hub listed the repo with file metadata; the file came from the resolve URL.
    assert hub.seen("GET", f"/api/models/{REPO}")
    assert hub.seen("GET", f"/{REPO}/resolve/")


@pytest.mark.parametrize("tag", ["Q8_0", "q8_0"])
def test_a_quant_tag_picks_that_file_case_insensitively(hub, store, q8_file, tag):
    name = f"hf.co/{REPO}:{tag}"
    list(pull(store, name, settings()))
    entry = store.get(name)
    assert entry.manifest.layer("model").digest == sha256_of(q8_file)
    config = json.loads(store.blobs.path(entry.manifest.config.digest).read_bytes())
    assert config["file_type"] == file_type_name(q8_file)


def test_huggingface_co_spelling_is_the_same_model(hub, store):
    pulling = pull(store, f"huggingface.co/{REPO}:Q8_0", settings())
    assert pulling.name.display == f"hf.co/{REPO}:Q8_0"
    list(pulling)
    assert store.exists(f"hf.co/{REPO}:Q8_0")


def test_missing_quant_is_a_clear_error_listing_what_there_is(hub, store):
    with pytest.raises(ModelNotFound) as error:
        list(pull(store, f"hf.co/{REPO}:Q5_K_M", settings()))
    assert "Q5_K_M" in error.value.message and Q4_1 in error.value.message and Q8_0 in error.value.message
    assert store.list().models == []


def test_unknown_repo_is_model_not_found(hub, store):
    with pytest.raises(ModelNotFound) as error:
        list(pull(store, "hf.co/nobody/nothing-GGUF", settings()))
    assert "nobody/nothing-GGUF" in error.value.message and "not found" in error.value.message


def test_repo_without_gguf_is_a_clear_error(hub, store):
    with pytest.raises(ModelNotFound) as error:
        list(pull(store, "hf.co/someone/safetensors-only", settings()))
    assert "GGUF" in error.value.message


def test_broken_download_is_a_pull_error_and_resumes(hub, store):
    digest = sha256_of(smollm2_gguf())
    resolve_path = f"/{REPO}/resolve/"
    hub.drop_after(f"/{REPO}/resolve/{COMMIT}/{Q4_1}", 2_000_000)  # downloads name the listed commit
    with pytest.raises(PullError) as error:
        list(pull(store, f"hf.co/{REPO}", settings()))
    assert hub.url.removeprefix("http://") in error.value.message
    [partial] = store.blobs.root.glob("*-partial")
    kept = partial.stat().st_size
    assert 0 < kept <= 2_000_000

    list(pull(store, f"hf.co/{REPO}", settings()))

    gets = [r for r in hub.seen("GET", resolve_path) if r.path.endswith(Q4_1)]
    assert gets[-1].range == f"bytes={kept}-"
    assert sha256_of(store.blobs.path(digest)) == digest
    assert list(store.blobs.root.glob("*-partial")) == []


def test_unreachable_hub_is_a_pull_error(monkeypatch, store):
    with FakeHub() as server:
        url = server.url
    monkeypatch.setenv("HF_ENDPOINT", url)
    with pytest.raises(PullError) as error:
        list(pull(store, f"hf.co/{REPO}", settings()))
    assert url.removeprefix("http://") in error.value.message


@pytest.mark.parametrize("files, quant, expected", [
    (["a-Q4_K_S.gguf", "a-Q4_K_M.gguf", "a-Q8_0.gguf"], None, "a-Q4_K_M.gguf"),
    (["a-Q8_0.gguf", "a-Q5_K_M.gguf"], None, "a-Q5_K_M.gguf"),
    (["a-f16.gguf", "a-bf16.gguf"], None, "a-f16.gguf"),
    (["a-bf16.gguf", "a-f16.gguf"], "F16", "a-f16.gguf"),
    (["qwen2.5-0.5b-instruct-fp16.gguf"], "f16", "qwen2.5-0.5b-instruct-fp16.gguf"),
    (["a-Q4_K.gguf", "a-Q4_K_M.gguf"], "q4_k", "a-Q4_K.gguf"),
    (["nomic-embed-text-v1.5.Q8_0.gguf", "nomic-embed-text-v1.5.Q4_K_M.gguf"], "Q8_0",
     "nomic-embed-text-v1.5.Q8_0.gguf"),
    (["mmproj-a-f16.gguf", "a-Q6_K.gguf"], None, "a-Q6_K.gguf"),
    (["a-Q4_K_M-00001-of-00002.gguf", "a-Q4_K_M-00002-of-00002.gguf", "a-Q8_0.gguf"], None, "a-Q8_0.gguf"),
    (["weird-name.gguf"], None, "weird-name.gguf"),
])
def test_choose_gguf(files, quant, expected):
    assert choose_gguf(files, quant) == expected


def test_choose_gguf_refuses_what_is_not_there():
    with pytest.raises(LookupError, match="no Q4_K_M file"):
        choose_gguf(["a-Q8_0.gguf"], "q4_k_m")
    with pytest.raises(LookupError, match="no single-file GGUF"):
        choose_gguf(["README.md", "a-00001-of-00002.gguf"], None)


def test_has_quant_matches_whole_tokens():
    assert has_quant("Model-Q4_K_M.gguf", "q4_k_m")
    assert not has_quant("Model-Q4_K_M.gguf", "q4_k")
    assert not has_quant("Model-BF16.gguf", "f16")
