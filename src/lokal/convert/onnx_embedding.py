"""Sentence-embedding models → ONNX: a BERT encoder in a sentence-transformers folder (config.json, safetensors,
tokenizer.json, 1_Pooling/, modules.json) exported with ``torch.onnx`` to ``model.onnx`` (fp32, dynamic batch
and sequence axes), beside its tokenizer and a ``pooling.json`` that says how sentence-transformers pools its
token vectors (mean or CLS, then normalized or not). ``lokal.engine.onnx_embed`` runs the result.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from lokal.errors import BadRequest
from lokal.json_files import read_json_object, read_json_objects

ENCODER_TYPES = ("bert",)  # encoders with input_ids, attention_mask and token_type_ids
POOLING_FILE = "pooling.json"
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")


def is_embedding_folder(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("model_type") in ENCODER_TYPES


def pooling_of(folder: Path) -> dict[str, Any]:
    """sentence-transformers' pooling: mode (mean or cls), normalize, and the longest input it embeds."""
    pooling = read_json_object(folder / "1_Pooling" / "config.json")
    mode = "cls" if pooling.get("pooling_mode_cls_token") and not pooling.get("pooling_mode_mean_tokens") else "mean"
    modules = read_json_objects(folder / "modules.json")
    normalize = any(str(module.get("type", "")).endswith("Normalize") for module in modules) if modules else True
    config = read_json_object(folder / "config.json")
    max_length = read_json_object(folder / "sentence_bert_config.json").get("max_seq_length") \
        or config.get("max_position_embeddings") or 512
    return {"pooling": mode, "normalize": normalize, "max_length": int(max_length),
            "embedding_length": config.get("hidden_size"), "block_count": config.get("num_hidden_layers")}


def export_embedding(folder: Path, out: Path) -> None:
    """Write ``out``: model.onnx, the tokenizer files and pooling.json."""
    import torch
    from transformers import AutoModel

    missing = [name for name in ("tokenizer.json", "config.json") if not (folder / name).is_file()]
    if missing:
        raise BadRequest(f"{folder} lacks {', '.join(missing)}: expected a sentence-transformers model folder")
    model = AutoModel.from_pretrained(str(folder), attn_implementation="sdpa").eval()

    class LastHiddenState(torch.nn.Module):  # named inputs in a fixed order; the token vectors out
        def __init__(self, encoder: Any):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state

    # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, recursively.
    wrapper = LastHiddenState(model).eval()
    out.mkdir(parents=True, exist_ok=True)
    example = torch.tensor([[101, 7592, 2088, 102], [101, 2088, 102, 0]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python branches; the graph is checked
        torch.onnx.export(wrapper, (example, (example > 0).long(), torch.zeros_like(example)), str(out / "model.onnx"),
                          input_names=INPUT_NAMES, output_names=["last_hidden_state"], opset_version=17,
                          dynamic_axes={name: {0: "batch", 1: "sequence"} for name in
                                        [*INPUT_NAMES, "last_hidden_state"]}, dynamo=False)
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
    (out / POOLING_FILE).write_text(json.dumps(pooling_of(folder), indent=2))
