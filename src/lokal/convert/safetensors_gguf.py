"""A Hugging Face safetensors folder → one GGUF file, with the ``gguf`` package and numpy (no torch).

Supported: BERT-family encoders (``BertModel``, sentence-transformers folders such as all-MiniLM-L6-v2),
BERT cross-encoders (``BertForSequenceClassification`` with one label: rerankers such as ms-marco-MiniLM, written
with rank pooling and their classification head as llama.cpp's converter writes them) and LLaMA-family
decoders (``LlamaForCausalLM``, SmolLM, …). The GGUF carries the weights (2-D matrices as f16, norms and biases
as f32, as llama.cpp's own converter writes them), the hyperparameters llama.cpp reads, the tokenizer
(vocabulary, merges, special tokens) and the chat template from ``tokenizer_config.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lokal.errors import BadRequest

log = logging.getLogger("lokal.convert")

BERT_ARCHITECTURES = {"BertModel", "BertForMaskedLM", "BertForSequenceClassification"}
LLAMA_ARCHITECTURES = {"LlamaForCausalLM", "LlamaModel", "MistralForCausalLM"}
# Weights llama.cpp's BERT graph has no use for (pooling is done by llama.cpp, the MLM head is not run).
_BERT_SKIPPED = ("embeddings.position_ids", "pooler.", "cls.")
# A cross-encoder's head, as llama.cpp's rank pooling runs it: the pooler (dense + tanh on the [CLS] state) is
# its `cls` tensor, the classifier (hidden → 1 score) its `cls.output`.
_RERANK_HEAD = {"pooler.dense.weight": "cls.weight", "pooler.dense.bias": "cls.bias",
                "classifier.weight": "cls.output.weight", "classifier.bias": "cls.output.bias"}


class ConversionError(BadRequest):
    """A folder that cannot be converted; the message says which file or tensor and why."""


def is_safetensors_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def architecture_of(folder: Path) -> str:
    config = _json(folder / "config.json")
    names = config.get("architectures") or []
    for name in names:
        if name in BERT_ARCHITECTURES:
            return "bert"
        if name in LLAMA_ARCHITECTURES:
            return "llama"
    model_type = config.get("model_type")
    if model_type in ("bert", "llama", "mistral"):
        return "bert" if model_type == "bert" else "llama"
    raise ConversionError(f"{folder}: cannot convert a {', '.join(names) or model_type or 'unknown'} model; "
                          f"supported: BERT-family encoders and LLaMA-family decoders")


def is_cross_encoder(config: dict[str, Any]) -> bool:
    """A BERT with a sequence-classification head: a reranker, scored by llama.cpp's rank pooling."""
    return "BertForSequenceClassification" in (config.get("architectures") or [])


def convert(folder: Path, out: Path, progress: Callable[[int, int], None] | None = None) -> None:
    """Write the GGUF of the safetensors model in ``folder`` to ``out``; ``progress(done, total)`` per tensor."""
    import gguf

    folder = Path(folder)
    architecture = architecture_of(folder)
    config = _json(folder / "config.json")
    writer = gguf.GGUFWriter(str(out), architecture)
    try:
        writer.add_name(config.get("_name_or_path") or folder.name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        if architecture == "bert":
            _bert_parameters(writer, config, folder)
            _bert_vocab(writer, folder)
        else:
            _llama_parameters(writer, config)
            _bpe_vocab(writer, folder)
        special = gguf.SpecialVocab(folder, load_merges=architecture == "llama",
                                    special_token_types=("bos", "eos", "unk", "sep", "pad", "mask"))
        special.add_to_gguf(writer)
        tensors = list(_tensors(folder, architecture, config))
        for index, (name, data) in enumerate(tensors):
            writer.add_tensor(name, data)
            if progress:
                progress(index + 1, len(tensors))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path.parent}: no {path.name}") from None
    except ValueError as exc:
        raise ConversionError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: not a JSON object")
    return data


def _required(config: dict[str, Any], key: str) -> Any:
    if key not in config:
        raise ConversionError(f"config.json has no {key!r}")
    return config[key]


# ---- hyperparameters ----------------------------------------------------------------------------------


def _bert_parameters(writer: Any, config: dict[str, Any], folder: Path) -> None:
    import gguf

    writer.add_context_length(_required(config, "max_position_embeddings"))
    writer.add_embedding_length(_required(config, "hidden_size"))
    writer.add_feed_forward_length(_required(config, "intermediate_size"))
    writer.add_block_count(_required(config, "num_hidden_layers"))
    writer.add_head_count(_required(config, "num_attention_heads"))
    writer.add_layer_norm_eps(config.get("layer_norm_eps", 1e-12))
    writer.add_causal_attention(False)
    if is_cross_encoder(config):
        labels = config.get("id2label") or {"0": "LABEL_0"}
        if config.get("num_labels", len(labels)) != 1:
            raise ConversionError(f"{folder}: a sequence classifier with {len(labels)} labels is not a reranker; "
                                  "only single-score cross-encoders (num_labels 1) are converted")
        writer.add_pooling_type(gguf.PoolingType.RANK)
    else:
        writer.add_pooling_type(_pooling(folder))


def _pooling(folder: Path) -> Any:
    """sentence-transformers' pooling (1_Pooling/config.json); mean pooling when the folder has none."""
    import gguf

    path = folder / "1_Pooling" / "config.json"
    if path.is_file():
        pooling = _json(path)
        if pooling.get("pooling_mode_cls_token"):
            return gguf.PoolingType.CLS
    return gguf.PoolingType.MEAN


def _llama_parameters(writer: Any, config: dict[str, Any]) -> None:
    heads = _required(config, "num_attention_heads")
    hidden = _required(config, "hidden_size")
    writer.add_context_length(_required(config, "max_position_embeddings"))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(_required(config, "intermediate_size"))
    writer.add_block_count(_required(config, "num_hidden_layers"))
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(config.get("head_dim") or hidden // heads)
    writer.add_vocab_size(_required(config, "vocab_size"))


# ---- tokenizers ---------------------------------------------------------------------------------------


def _tokenizer(folder: Path) -> dict[str, Any]:
    return _json(folder / "tokenizer.json")


def _vocab_by_id(tokenizer: dict[str, Any]) -> list[str]:
    vocab: dict[str, int] = tokenizer.get("model", {}).get("vocab") or {}
    for added in tokenizer.get("added_tokens") or []:
        vocab.setdefault(added["content"], added["id"])
    tokens = [""] * (max(vocab.values()) + 1 if vocab else 0)
    for token, index in vocab.items():
        tokens[index] = token
    if not tokens:
        raise ConversionError("tokenizer.json has no vocabulary")
    return tokens


def _token_types(tokenizer: dict[str, Any], tokens: list[str]) -> list[int]:
    import gguf

    types = [gguf.TokenType.NORMAL] * len(tokens)
    for added in tokenizer.get("added_tokens") or []:
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    for index, token in enumerate(tokens):
        if token == "":
            types[index] = gguf.TokenType.UNUSED
    return types


def _bert_vocab(writer: Any, folder: Path) -> None:
    """WordPiece, in llama.cpp's spelling: a word start carries ▁, a continuation loses its ##."""
    tokenizer = _tokenizer(folder)
    if (tokenizer.get("model") or {}).get("type") != "WordPiece":
        raise ConversionError(f"{folder}: a BERT model needs a WordPiece tokenizer.json")
    tokens = _vocab_by_id(tokenizer)
    types = _token_types(tokenizer, tokens)

    def phantom(token: str) -> str:
        if token.startswith("[") and token.endswith("]"):
            return token
        return token[2:] if token.startswith("##") else "\u2581" + token

    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([phantom(token) for token in tokens])
    writer.add_token_types(types)
    writer.add_token_type_count(_json(folder / "config.json").get("type_vocab_size", 2))


def _bpe_vocab(writer: Any, folder: Path) -> None:
    tokenizer = _tokenizer(folder)
    if (tokenizer.get("model") or {}).get("type") != "BPE":
        raise ConversionError(f"{folder}: only byte-level BPE tokenizers are converted for LLaMA-family models")
    tokens = _vocab_by_id(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_bpe_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(_token_types(tokenizer, tokens))


def _bpe_pre_tokenizer(tokenizer: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer: SmolLM-style splits digits one by one ("smollm"), LLaMA 3 style
    splits them in threes ("llama-bpe"); anything else gets GPT-2's ("default")."""
    text = json.dumps(tokenizer.get("pre_tokenizer") or {})
    if '"Digits"' in text and '"individual_digits": true' in text:
        return "smollm"
    if "\\\\p{N}{1,3}" in text:
        return "llama-bpe"
    return "default"


# ---- tensors ------------------------------------------------------------------------------------------


def _tensors(folder: Path, architecture: str, config: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    import gguf

    arch = gguf.MODEL_ARCH.BERT if architecture == "bert" else gguf.MODEL_ARCH.LLAMA
    names = gguf.get_tensor_name_map(arch, _required(config, "num_hidden_layers"))
    head = _RERANK_HEAD if architecture == "bert" and is_cross_encoder(config) else {}
    for file in sorted(folder.glob("*.safetensors")):
        for name, data in read_safetensors(file):
            source = name.removeprefix("bert.") if architecture == "bert" else name
            if source in head:
                yield head[source], _stored_type(head[source], data)
                continue
            if architecture == "bert" and source.startswith(_BERT_SKIPPED):
                continue
            if architecture == "llama" and "rotary_emb.inv_freq" in source:
                continue
            target = names.get_name(source, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise ConversionError(f"{file.name}: tensor {name!r} has no place in a {architecture} GGUF")
            if architecture == "llama":
                data = _llama_layout(source, data, config)
            yield target, _stored_type(target, data)


_SAFETENSORS_TYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16,
                      "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for each tensor of a .safetensors file, memory-mapped; bf16 widened to f32 (numpy has
    no bf16, which is why safetensors' own numpy loader cannot read it)."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        header_size = int(data[:8].view(np.uint64)[0])
        header = json.loads(bytes(data[8:8 + header_size]))
    except (ValueError, IndexError) as exc:
        raise ConversionError(f"{path.name}: not a safetensors file ({exc})") from None
    start = 8 + header_size
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_TYPES.get(info.get("dtype"))
        if dtype is None:
            raise ConversionError(f"{path.name}: tensor {name!r} has the unsupported type {info.get('dtype')}")
        begin, end = info["data_offsets"]
        array = data[start + begin:start + end].view(dtype).reshape(info["shape"])
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        yield name, array


def _llama_layout(name: str, data: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """HF stores q/k rows with the rotary halves apart; llama.cpp wants each pair interleaved."""
    heads = config["num_attention_heads"]
    if name.endswith("q_proj.weight"):
        return _permute(data, heads)
    if name.endswith("k_proj.weight"):
        return _permute(data, config.get("num_key_value_heads") or heads)
    return data


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


# Tensors llama.cpp adds to f32 activations (ggml's CPU add takes no f16 operand), kept f32 as llama.cpp's own
# converter keeps them.
_F32_TENSORS = ("position_embd.", "token_types.")


def _stored_type(name: str, data: np.ndarray) -> np.ndarray:
    """Weight matrices as f16; vectors (norms, biases) and the added embeddings as f32."""
    if data.dtype not in (np.float32, np.float16, np.float64):
        data = data.astype(np.float32)
    if data.ndim < 2 or not name.endswith(".weight") or name.startswith(_F32_TENSORS):
        return data.astype(np.float32)
    return data.astype(np.float16)
