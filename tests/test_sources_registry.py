"""Pulls from an Ollama-protocol registry served by a local fake holding the real SmolLM2 GGUF."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lokal.config import Settings
from lokal.errors import DigestMismatch, ModelNotFound, PullError
from lokal.store import Store
from lokal.store.sources import pull
from fakes.models import sha256_of, smollm2_gguf
from fakes.registry import FakeRegistry

TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}"
PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2}
NAME = "smollm2-test:135m"


@pytest.fixture
def registry():
    with FakeRegistry() as server:
        server.published = server.publish(f"library/{NAME}", smollm2_gguf(), template=TEMPLATE, params=PARAMS,
                                           license="Apache License 2.0")
        yield server


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "models")


def settings_for(registry: FakeRegistry) -> Settings:
    return Settings(environ={}, overrides={"registry": registry.url})


def model_digest(registry: FakeRegistry) -> str:
    return next(layer["digest"] for layer in registry.published["layers"] if layer["mediaType"].endswith(".model"))


def partial_files(store: Store) -> list[Path]:
    return sorted(store.blobs.root.glob("*-partial")) if store.blobs.root.exists() else []


def test_pull_stores_every_blob_and_the_manifest_as_the_registry_has_them(registry, store):
    events = list(pull(store, NAME, settings_for(registry)))

    manifest = registry.published
    layers = [manifest["config"], *manifest["layers"]]
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    for layer in layers:
        mine = [e for e in events if e.digest == layer["digest"]]
        assert mine and all(e.status == "pulling " + layer["digest"][7:19] for e in mine)
        assert all(e.total == layer["size"] for e in mine)
        completed = [e.completed for e in mine]
        assert completed == sorted(completed) and completed[-1] == layer["size"]

    entry = store.get(NAME)
    assert entry.name.display == NAME
    assert entry.manifest.config.digest == manifest["config"]["digest"]
    assert [(l.media_type, l.digest, l.size) for l in entry.manifest.layers] == \
           [(l["mediaType"], l["digest"], l["size"]) for l in manifest["layers"]]
    for layer in layers:  # each blob's bytes hash to its name
        assert sha256_of(store.blobs.path(layer["digest"])) == layer["digest"]
    assert store.blobs.path(model_digest(registry)).read_bytes() == smollm2_gguf().read_bytes()
    assert store.layer_text(entry, "template") == TEMPLATE
    assert store.params(entry) == PARAMS
    # The blob request was redirected to the "CDN", as registry.ollama.ai does, and followed.
    assert registry.seen("GET", f"/v2/library/smollm2-test/blobs/{model_digest(registry)}")
    assert len(registry.blob_gets(model_digest(registry))) == 1
    manifest_request = registry.seen("GET", "/v2/library/smollm2-test/manifests/135m")[0]
    assert manifest_request.headers["Accept"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert partial_files(store) == []


def test_pulling_again_downloads_nothing(registry, store):
    list(pull(store, NAME, settings_for(registry)))
    num_blob_gets = len(registry.seen("GET", "/cdn/"))
    events = list(pull(store, NAME, settings_for(registry)))
    assert len(registry.seen("GET", "/cdn/")) == num_blob_gets
    assert events[-1].status == "success"


def test_unknown_model_is_model_not_found_and_stores_nothing(registry, store):
    with pytest.raises(ModelNotFound) as error:
        list(pull(store, "nosuch:1b", settings_for(registry)))
    assert "file does not exist" in error.value.message and "nosuch:1b" in error.value.message
    assert store.list().models == []


def test_corrupted_blob_is_rejected_and_nothing_is_stored(registry, store):
    bad = model_digest(registry)
    registry.corrupt(bad)
    with pytest.raises(DigestMismatch) as error:
        list(pull(store, NAME, settings_for(registry)))
    assert error.value.expected == bad
    assert "nothing was stored" in error.value.message
    assert not store.blobs.exists(bad)
    assert partial_files(store) == []
    assert store.list().models == []


def test_network_error_mid_pull_is_a_pull_error_and_the_next_pull_resumes(registry, store):
    digest = model_digest(registry)
    registry.drop_after(f"/cdn/{digest}", 5_000_000)
    with pytest.raises(PullError) as error:
        list(pull(store, NAME, settings_for(registry)))
    host = registry.url.removeprefix("http://")
    assert host in error.value.message and "resume" in error.value.message
    assert store.list().models == []
    [partial] = partial_files(store)
    kept = partial.stat().st_size
    assert 0 < kept <= 5_000_000

    events = list(pull(store, NAME, settings_for(registry)))

    last_get = registry.blob_gets(digest)[-1]
    assert last_get.range == f"bytes={kept}-"
    resumed = [e for e in events if e.digest == digest]
    assert resumed[0].completed == kept
    assert sha256_of(store.blobs.path(digest)) == digest
    assert store.get(NAME).manifest.layers[0].digest == digest
    assert partial_files(store) == []


_PULL_SCRIPT = """
import sys
from lokal.config import Settings
from lokal.store import Store
from lokal.store.sources import pull
settings = Settings(environ={}, overrides={"registry": sys.argv[3]})
for event in pull(Store(sys.argv[1]), sys.argv[2], settings):
    print(event.status, event.completed, flush=True)
"""


def test_killed_pull_resumes_from_the_partial_file(registry, store):
    digest = model_digest(registry)
    registry.throttle_bytes_per_second = 4_000_000
    process = subprocess.Popen([sys.executable, "-c", _PULL_SCRIPT, str(store.root), NAME, registry.url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while registry.bytes_sent.get(f"/cdn/{digest}", 0) < 3_000_000:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the pull did not start downloading"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    [partial] = partial_files(store)
    kept = partial.stat().st_size
    assert 0 < kept < smollm2_gguf().stat().st_size
    assert store.list().models == []

    registry.throttle_bytes_per_second = None
    list(pull(store, NAME, settings_for(registry)))

    resumed = registry.blob_gets(digest)[-1]
    assert resumed.range == f"bytes={kept}-"
    assert resumed.num_body_bytes == smollm2_gguf().stat().st_size - kept  # only the missing bytes travelled
    assert sha256_of(store.blobs.path(digest)) == digest
    assert store.exists(NAME)
    assert partial_files(store) == []


def test_two_concurrent_pulls_download_the_blob_once(registry, store):
    digest = model_digest(registry)
    registry.throttle_bytes_per_second = 40_000_000  # ~2.5 s, so the second pull starts mid-download
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def run(label: str) -> None:
        try:
            results[label] = list(pull(store, NAME, settings_for(registry)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    deadline = time.monotonic() + 60
    while registry.bytes_sent.get(f"/cdn/{digest}", 0) == 0:
        assert time.monotonic() < deadline and first.is_alive()
        time.sleep(0.01)
    second = threading.Thread(target=run, args=("second",))
    second.start()
    first.join(120)
    second.join(120)

    assert errors == []
    assert len(registry.blob_gets(digest)) == 1
    assert len(registry.seen("GET", "/v2/library/smollm2-test/manifests/")) == 2
    # The second pull waited for the first and found the blob complete.
    second_model = [e for e in results["second"] if e.digest == digest]
    assert [e.completed for e in second_model] == [smollm2_gguf().stat().st_size]
    assert results["first"][-1].status == results["second"][-1].status == "success"
    assert sha256_of(store.blobs.path(digest)) == digest


def test_catalog_name_pulls_the_catalogs_registry_tag_and_stores_the_name_given(registry, store):
    # The catalog maps the seed's phi4:mini to the registry's phi4-mini:3.8b-q4_K_M.
    registry.publish("library/phi4-mini:3.8b-q4_K_M", smollm2_gguf())
    pulling = pull(store, "phi4:mini", settings_for(registry))
    assert pulling.name.display == "phi4:mini"
    list(pulling)
    assert registry.seen("GET", "/v2/library/phi4-mini/manifests/3.8b-q4_K_M")
    assert store.get("phi4:mini").manifest.layers[0].digest == sha256_of(smollm2_gguf())


def test_a_name_with_its_own_host_goes_to_that_host(registry, store):
    host = registry.url.removeprefix("http://")
    name = f"{host}/library/{NAME}"
    list(pull(store, name, Settings(environ={}), insecure=True))  # LOKAL_REGISTRY stays the default
    assert store.get(name).manifest.layers[0].digest == model_digest(registry)


def test_unreachable_registry_is_a_pull_error_naming_it(store):
    with FakeRegistry() as server:
        url = server.url  # a port nothing listens on once the server is gone
    with pytest.raises(PullError) as error:
        list(pull(store, NAME, Settings(environ={}, overrides={"registry": url})))
    assert url.removeprefix("http://") in error.value.message and "manifest" in error.value.message


def test_progress_events_serialize_like_ollamas(registry, store):
    events = list(pull(store, NAME, settings_for(registry)))
    lines = [json.dumps(e.to_dict()) for e in events]
    assert lines[0] == '{"status": "pulling manifest"}'
    model = next(e for e in events if e.digest == model_digest(registry))
    assert set(model.to_dict()) == {"status", "digest", "total", "completed"}
