"""ONNX models in the store: a GenAI model folder as blobs under one manifest.

An ONNX model is a folder (``genai_config.json``, ``model.onnx``, ``model.onnx.data``, tokenizer files …).
Each file is one layer of media type ``application/vnd.lokal.image.onnx`` whose ``from`` is its path in the
folder; the config blob says ``"model_format": "onnx"`` plus the execution provider and precision it was
built for. onnxruntime-genai opens folders, not blobs, so ``materialize`` links the blobs back into a folder
under ``<store>/onnx/<model id>/`` (symlinks: no copy, and a removed model only leaves dangling links
that the next materialize replaces).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lokal.errors import StoreError
from lokal.store.gguf_info import ModelDetails
from lokal.store.manifests import CONFIG_MEDIA_TYPE, LAYER_KINDS, Layer, Manifest, config_blob
from lokal.store.names import ModelName
from lokal.store.store import ModelEntry, Store

ONNX_MEDIA_TYPE = LAYER_KINDS["onnx"]


@dataclass(frozen=True)
class OnnxInfo:
    """What the config blob of an ONNX model says."""

    family: str
    parameter_size: str
    precision: str  # int4, int8, fp16, fp32
    provider: str  # cpu, cuda, dml, webgpu, … (the builder's -e)
    source: str  # the model it was converted from


def is_onnx(entry: ModelEntry) -> bool:
    return any(layer.media_type == ONNX_MEDIA_TYPE for layer in entry.manifest.layers)


def model_format(entry: ModelEntry) -> str:
    return "onnx" if is_onnx(entry) else "gguf"


def store_folder(store: Store, name: str | ModelName, folder: Path, info: OnnxInfo) -> ModelEntry:
    """Add every file under ``folder`` as a blob, then write the manifest (last, atomically)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not any(p.name in ("genai_config.json", "pooling.json") for p in files):
        raise StoreError(f"{folder} is not an ONNX model folder lokal runs: no genai_config.json (onnxruntime-genai) "
                         f"or pooling.json (an embedding model from `lokal convert`)")
    with store.writing():
        layers = []
        for path in files:
            digest = store.blobs.add_file(path)
            layers.append(Layer(ONNX_MEDIA_TYPE, digest, store.blobs.size(digest),
                                path.relative_to(folder).as_posix()))
        config = onnx_config_blob(info, layers)
        manifest = Manifest(Layer(CONFIG_MEDIA_TYPE, store.blobs.add_bytes(config), len(config)), layers)
        return store.write_manifest(name, manifest)


def onnx_config_blob(info: OnnxInfo, layers: list[Layer]) -> bytes:
    """Ollama's config JSON with format onnx, plus the execution provider and precision."""
    data = json.loads(config_blob("onnx", info.family, model_type=info.parameter_size, file_type=info.precision,
                                  diff_ids=[layer.digest for layer in layers]))
    data.update(execution_provider=info.provider, precision=info.precision, converted_from=info.source)
    return json.dumps(data, separators=(",", ":")).encode()


def read_info(store: Store, entry: ModelEntry) -> OnnxInfo:
    try:
        data = json.loads(store.blobs.path(entry.manifest.config.digest).read_bytes())
    except (OSError, ValueError) as exc:
        raise StoreError(f"the config of {entry.name.display} cannot be read: {exc}") from None
    return OnnxInfo(family=str(data.get("model_family", "")), parameter_size=str(data.get("model_type", "")),
                    precision=str(data.get("precision") or data.get("file_type", "")),
                    provider=str(data.get("execution_provider", "cpu")), source=str(data.get("converted_from", "")))


def materialize(store: Store, entry: ModelEntry) -> Path:
    """The model as a folder onnxruntime-genai can open; checks every blob is present with its size."""
    folder = store.root / "onnx" / entry.id
    layers = [layer for layer in entry.manifest.layers if layer.media_type == ONNX_MEDIA_TYPE]
    for layer in layers:
        blob = store.blobs.path(layer.digest)
        try:
            size = blob.stat().st_size
        except FileNotFoundError:
            raise StoreError(f"{entry.name.display}: file {layer.from_} (blob {layer.digest}) is missing from "
                             f"the store; convert or pull the model again") from None
        if size != layer.size:
            raise StoreError(f"{entry.name.display}: file {layer.from_} is {size} bytes, the manifest says "
                             f"{layer.size}")
    if folder.is_dir() and all(_links_to(folder / str(layer.from_), store.blobs.path(layer.digest))
                               for layer in layers):
        return folder
    temp = folder.with_name(f".{entry.id}.{secrets.token_hex(4)}.tmp")
    for layer in layers:
        target = temp / _safe_relative(str(layer.from_), entry)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(store.blobs.path(layer.digest).resolve(), target)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(temp, folder)
    return folder


def _links_to(link: Path, blob: Path) -> bool:
    try:
        return link.resolve() == blob.resolve() and link.exists()
    except OSError:
        return False


def _safe_relative(path: str, entry: ModelEntry) -> Path:
    relative = Path(path)
    if not path or relative.is_absolute() or ".." in relative.parts:
        raise StoreError(f"{entry.name.display}: refusing a model file path outside its folder: {path!r}")
    return relative


def _layer_bytes(store: Store, entry: ModelEntry, file_name: str) -> bytes | None:
    layer = next((layer for layer in entry.manifest.layers
                  if layer.media_type == ONNX_MEDIA_TYPE and layer.from_ == file_name), None)
    if layer is None:
        return None
    try:
        return store.blobs.path(layer.digest).read_bytes()
    except OSError:
        return None


def read_details(store: Store, entry: ModelEntry) -> ModelDetails:
    """``ModelDetails`` (what show/ps print, what the runtime sizes) from genai_config.json and the config blob."""
    info = read_info(store, entry)
    pooling_bytes = _layer_bytes(store, entry, "pooling.json")
    genai_bytes = _layer_bytes(store, entry, "genai_config.json")
    if pooling_bytes is not None and genai_bytes is None:
        return _embedding_details(entry, info, pooling_bytes)
    try:
        genai = json.loads(genai_bytes or b"{}")
        tokenizer_config = json.loads(_layer_bytes(store, entry, "tokenizer_config.json") or b"{}")
    except ValueError as exc:
        raise StoreError(f"{entry.name.display}: unreadable model config: {exc}") from None
    template = (_layer_bytes(store, entry, "chat_template.jinja") or b"").decode("utf-8", errors="replace") \
        or tokenizer_config.get("chat_template")
    model = genai.get("model", {})
    decoder = model.get("decoder", {})
    architecture = info.family or str(model.get("type", ""))
    return _details(entry, info, architecture, {
        f"{architecture}.block_count": decoder.get("num_hidden_layers"),
        f"{architecture}.embedding_length": decoder.get("hidden_size"),
        f"{architecture}.attention.head_count": decoder.get("num_attention_heads"),
        f"{architecture}.attention.head_count_kv": decoder.get("num_key_value_heads"),
        f"{architecture}.context_length": model.get("context_length"),
    }, context_length=model.get("context_length"), embedding_length=decoder.get("hidden_size"),
        chat_template=template or None)


def _embedding_details(entry: ModelEntry, info: OnnxInfo, pooling_bytes: bytes) -> ModelDetails:
    """An embedding encoder's details from its pooling.json (convert/onnx_embedding.py)."""
    try:
        pooling = json.loads(pooling_bytes)
    except ValueError as exc:
        raise StoreError(f"{entry.name.display}: unreadable pooling.json: {exc}") from None
    architecture = info.family or "bert"
    return _details(entry, info, architecture, {
        f"{architecture}.block_count": pooling.get("block_count"),
        f"{architecture}.embedding_length": pooling.get("embedding_length"),
        f"{architecture}.context_length": pooling.get("max_length"),
        f"{architecture}.pooling_type": pooling.get("pooling"),
    }, context_length=pooling.get("max_length"), embedding_length=pooling.get("embedding_length"),
        pooling_type=pooling.get("pooling"))


def _details(entry: ModelEntry, info: OnnxInfo, architecture: str, facts: dict[str, Any], *,
             context_length: Any, embedding_length: Any, chat_template: str | None = None,
             pooling_type: Any = None) -> ModelDetails:
    """What every ONNX model's details share: the architecture, execution provider and precision around
    its own ``facts`` in the metadata (unknown ones left out), and none of a GGUF's (parameter count, file
    type, special tokens, license)."""
    metadata = {"general.architecture": architecture, **facts,
                "onnx.execution_provider": info.provider, "onnx.precision": info.precision}
    return ModelDetails(architecture=architecture, name=entry.name.model, family=architecture,
                        parameter_count=0, parameter_size=info.parameter_size, file_type=None,
                        quantization_level=info.precision, context_length=context_length,
                        embedding_length=embedding_length, chat_template=chat_template,
                        bos_token=None, eos_token=None, license=None, pooling_type=pooling_type,
                        metadata={k: v for k, v in metadata.items() if v is not None})
