"""Build real LoRA adapter GGUFs for the tests, in llama.cpp's adapter format, with the ``gguf`` package.

A LoRA GGUF holds, for each adapted weight ``W`` (ggml shape ``[n_in, n_out]``), ``<name>.lora_a`` of ggml
shape ``[n_in, rank]`` and ``<name>.lora_b`` of shape ``[rank, n_out]`` (numpy shapes reversed), plus
``general.type = adapter``, ``adapter.type = lora`` and ``adapter.lora.alpha``. The shapes come from the real
model file, so llama.cpp accepts the adapter exactly as it would one converted from a PEFT checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter

ATTENTION = ("attn_q", "attn_v")


def lora_for(model_path: str | Path, out: Path, *, rank: int = 4, b_scale: float = 0.0, seed: int = 0,
             architecture: str | None = None, dtype: str = "float32") -> Path:
    """A rank-``rank`` LoRA on the attention q/v weights of every layer of the model at ``model_path``.
    ``b_scale = 0`` makes B zero (the adapter changes nothing); otherwise B is random with that spread."""
    reader = GGUFReader(str(model_path))
    arch = architecture or bytes(reader.fields["general.architecture"].parts[-1]).decode()
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(out), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for tensor in reader.tensors:
        if not tensor.name.startswith("blk.") or tensor.name.split(".")[2] not in ATTENTION:
            continue
        n_in, n_out = int(tensor.shape[0]), int(tensor.shape[1])  # ggml order: ne0 is the input width
        lora_a = (rng.standard_normal((rank, n_in)) / np.sqrt(n_in)).astype(dtype)
        lora_b = (rng.standard_normal((n_out, rank)) * b_scale).astype(dtype)
        base = tensor.name.removesuffix(".weight") + ".weight"
        writer.add_tensor(base + ".lora_a", lora_a)
        writer.add_tensor(base + ".lora_b", lora_b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def lora_with_shapes(out: Path, architecture: str, shapes: dict[str, tuple[int, int]], rank: int = 4) -> Path:
    """An adapter for a model that is not there: given tensor names and their (n_in, n_out)."""
    writer = GGUFWriter(str(out), architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for name, (n_in, n_out) in shapes.items():
        writer.add_tensor(name + ".lora_a", np.ones((rank, n_in), dtype=np.float32))
        writer.add_tensor(name + ".lora_b", np.ones((n_out, rank), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
