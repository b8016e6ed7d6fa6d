"""safetensors → GGUF: all-MiniLM-L6-v2 from its pip package, pulled offline as `all-minilm`, embeds like
sentence-transformers (the independent reference, on torch) does; a bad folder is a clear error."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lokal.config import Settings
from lokal.convert.safetensors_gguf import ConversionError, convert
from lokal.store.sources import pull
from lokal.store.store import Store

SENTENCES = [
    "The cat sat on the mat.",
    "A feline rested on the rug.",
    "Quarterly revenue grew by twelve percent.",
    "The central bank raised interest rates again.",
    "How do I reset my password?",
    "Edge AI represents a paradigm shift in artificial intelligence deployment.",
    "Local models keep data on the organisation's own machines.",
    "Photosynthesis turns sunlight into chemical energy.",
    "She plays the violin in the city orchestra.",
    "Lisbon is the capital of Portugal.",
    "Unit tests should be deterministic.",
    "¿Dónde está la estación de tren?",
]


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def minilm_folder(tmp_path_factory) -> Path:
    package = pytest.importorskip("all_minilm_l6_v2")
    folder = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(package.get_model_zip_path()) as archive:
        archive.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory, minilm_folder) -> Path:
    root = tmp_path_factory.mktemp("models")
    statuses = [event.status for event in pull(Store(root), "all-minilm", Settings(environ={"LOKAL_MODELS": str(root)}))]
    assert "converting safetensors to GGUF" in statuses and statuses[-1] == "success"
    return root


# The reference runs in its own process: torch's OpenMP runtime and llama.cpp's in one process deadlock here.
_REFERENCE = """
import json, sys
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
print(json.dumps(model.encode(json.loads(sys.stdin.read())).tolist()))
"""


def sentence_transformers_vectors(folder: Path, sentences: list[str]) -> list[list[float]]:
    done = subprocess.run([sys.executable, "-c", _REFERENCE, str(folder)], input=json.dumps(sentences),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_all_minilm_embeddings_match_sentence_transformers(minilm_store, minilm_folder) -> None:
    from lokal.llm import LLM

    expected = sentence_transformers_vectors(minilm_folder, SENTENCES)
    with LLM("all-minilm", settings=Settings(environ={"LOKAL_MODELS": str(minilm_store)}), pull=False) as llm:
        actual = llm.embed(SENTENCES)
        shown = llm.info()
    assert shown.capabilities == ["embedding"]
    assert shown.details["family"] == "bert" and shown.details["quantization_level"] == "F16"
    similarities = [cosine(a, b) for a, b in zip(actual, expected, strict=True)]
    assert min(similarities) >= 0.99, similarities
    assert all(len(vector) == 384 for vector in actual)


def test_pulling_again_gives_the_same_model(minilm_store) -> None:
    store = Store(minilm_store)
    before = store.get("all-minilm").manifest.layer("model").digest
    for _ in pull(store, "all-minilm", Settings(environ={"LOKAL_MODELS": str(minilm_store)})):
        pass
    assert store.get("all-minilm").manifest.layer("model").digest == before  # the conversion is deterministic
    assert [p.name for p in store.blobs.root.iterdir() if p.name.startswith("tmp-")] == []


def test_a_folder_of_another_kind_is_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["WhisperForConditionalGeneration"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConversionError, match="cannot convert a WhisperForConditionalGeneration model"):
        convert(tmp_path, tmp_path / "out.gguf")


# ---- a LLaMA-family decoder: SmolLM2 written out as a Hugging Face folder, imported back ------------------

# GGUF tensor names → Hugging Face LLaMA names (per layer after "blk.N.").
_HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _field(reader, key):
    field = reader.fields[key]
    return field.contents()


def write_hf_folder(gguf_path: str, folder: Path) -> None:
    """The GGUF as transformers would save it: dequantized f16 weights with q/k rows in HF's rotary layout,
    config.json, a byte-level BPE tokenizer.json (vocabulary, merges, SmolLM's digit splitting) and
    tokenizer_config.json with the chat template. Written with gguf's reader, numpy and safetensors."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    reader = GGUFReader(gguf_path)
    heads, kv_heads = _field(reader, "llama.attention.head_count"), _field(reader, "llama.attention.head_count_kv")
    weights = {}
    for tensor in reader.tensors:
        data = dequantize(tensor.data, tensor.tensor_type).reshape([int(n) for n in reversed(tensor.shape)])
        parts = tensor.name.split(".")
        if parts[0] == "blk":
            kind = parts[2]
            if kind in ("attn_q", "attn_k"):
                n = heads if kind == "attn_q" else kv_heads
                data = data.reshape(n, data.shape[0] // n // 2, 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)
            name = f"model.layers.{parts[1]}.{_HF_NAMES[kind]}.weight"
        else:
            name = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                    "output.weight": "lm_head.weight"}[tensor.name]
        weights[name] = np.ascontiguousarray(data.astype(np.float16 if data.ndim == 2 else np.float32))
    folder.mkdir(parents=True)
    save_file(weights, str(folder / "model.safetensors"))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    specials = [{"id": i, "content": t, "special": True} for i, (t, k) in enumerate(zip(tokens, types)) if k == 3]
    (folder / "tokenizer.json").write_text(json.dumps({
        "added_tokens": specials,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "add_prefix_space": False}]},
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": list(_field(reader, "tokenizer.ggml.merges"))}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": tokens[_field(reader, "tokenizer.ggml.bos_token_id")],
        "eos_token": tokens[_field(reader, "tokenizer.ggml.eos_token_id")],
        "chat_template": _field(reader, "tokenizer.chat_template")}))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": _field(reader, "llama.embedding_length"),
        "intermediate_size": _field(reader, "llama.feed_forward_length"),
        "num_hidden_layers": _field(reader, "llama.block_count"), "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "rms_norm_eps": _field(reader, "llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": _field(reader, "llama.rope.freq_base"),
        "max_position_embeddings": _field(reader, "llama.context_length"),
        "vocab_size": len(tokens), "tie_word_embeddings": "output.weight" not in [t.name for t in reader.tensors]}))


def test_llama_import_generates_like_the_original(tmp_path, smollm2_path) -> None:
    from lokal.llm import LLM

    write_hf_folder(smollm2_path, tmp_path / "hf")
    (tmp_path / "Modelfile").write_text("FROM ./hf\n")
    (tmp_path / "F16").write_text("FROM smollm2\n")
    models = tmp_path / "models"
    settings = Settings(environ={"LOKAL_MODELS": str(models), "LOKAL_HOST": "127.0.0.1:9"})
    from lokal.cli.models import LocalBackend

    backend = LocalBackend(settings)
    for _ in pull(backend.store, "smollm2", settings):
        pass
    assert list(backend.create("smol-imported", tmp_path / "Modelfile", None))[-1].status == "success"
    # The reference: the same dequantized weights, made f16 by llama.cpp's own quantizer.
    assert list(backend.create("smol-f16", tmp_path / "F16", "f16"))[-1].status == "success"
    answers = {}
    for name in ("smol-imported", "smol-f16"):
        with LLM(name, settings=settings, pull=False) as llm:
            answers[name] = llm.generate("1, 2, 3, 4, 5, 6,", raw=True, options={"temperature": 0, "num_predict": 8})
            chat = llm.chat([{"role": "user", "content": "Hi"}], options={"temperature": 0, "num_predict": 4})
            assert chat.text  # the imported chat template renders
    assert answers["smol-imported"].text == answers["smol-f16"].text
    assert answers["smol-imported"].text.startswith(" 7, 8")
    assert Store(models).open("smol-imported").details.chat_template == Store(models).open("smollm2").details.chat_template
