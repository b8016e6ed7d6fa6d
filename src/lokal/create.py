"""Create a model from an existing one (or from uploaded GGUF blobs) with new defaults: Ollama's
``/api/create`` JSON form (``from``, ``files``, ``system``, ``template``, ``parameters``, ``messages``,
``license``, ``quantize``).

The new manifest shares the base model's blobs; only what changed becomes a new blob (a system prompt, a
params object, a quantized GGUF). Quantizing runs llama.cpp's own quantizer, and unlike Ollama it also
accepts an already-quantized base (llama.cpp's ``allow_requantize``), at some cost in quality.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lokal.config import physical_cores
from lokal.errors import BadRequest, LokalError, StoreError
from lokal.store.manifests import CONFIG_MEDIA_TYPE, LAYER_KINDS, Layer, Manifest, config_blob
from lokal.store.names import ModelName
from lokal.store.sources.base import GGUF_MAGIC, Progress
from lokal.store.store import Store
from lokal.types import split_options

MESSAGE_ROLES = ("system", "user", "assistant", "tool")


@dataclass
class CreateSpec:
    name: str
    source: str | None = None  # "from": a model in the store
    files: dict[str, str] | None = None  # file name → digest of an uploaded GGUF blob
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    quantize: str | None = None


def quantization_types() -> dict[str, int]:
    """``q4_k_m`` → llama.cpp's file type number, for every type this llama.cpp can write."""
    import llama_cpp

    types = {name.removeprefix("LLAMA_FTYPE_MOSTLY_").lower(): getattr(llama_cpp, name)
             for name in dir(llama_cpp) if name.startswith("LLAMA_FTYPE_MOSTLY_")}
    types["f32"] = llama_cpp.LLAMA_FTYPE_ALL_F32
    return types


def create_model(store: Store, spec: CreateSpec) -> Iterator[Progress]:
    """Write the new model's layers and manifest, reporting progress as Ollama's create does.
    Problems with the request raise before the first event."""
    name = ModelName.parse(spec.name)
    if name.digest:
        raise BadRequest(f"cannot create {spec.name!r}: a new model's name has no digest")
    if spec.adapters:
        raise BadRequest("adapters are not supported yet")
    quantize_type = _check_quantize(spec.quantize)
    parameters = _check_parameters(spec.parameters)
    messages = _check_messages(spec.messages)
    base_layers, base_params = _base_layers(store, spec)
    return _create(store, name, spec, base_layers, {**base_params, **parameters}, messages, quantize_type)


def _create(store: Store, name: ModelName, spec: CreateSpec, layers: list[Layer], params: dict[str, Any],
            messages: list[dict[str, Any]] | None, quantize_type: int | None) -> Iterator[Progress]:
    from lokal.store.gguf_info import read_details

    with store.writing():  # no garbage collection may take the new blobs before the manifest names them
        yield Progress("gathering model components")
        base_digests = {layer.digest for layer in layers}
        if quantize_type is not None:
            yield Progress(f"quantizing model to {spec.quantize.upper()}")  # type: ignore[union-attr]
            layers = _replace(layers, "model", [_quantized_layer(store, _model_layer(layers), quantize_type)])
        for kind, text in (("template", spec.template), ("system", spec.system)):
            if text is not None:
                layers = _replace(layers, kind, [_text_layer(store, kind, text)])
        if spec.license is not None:
            licenses = [spec.license] if isinstance(spec.license, str) else list(spec.license)
            layers = _replace(layers, "license", [_text_layer(store, "license", text) for text in licenses])
        if spec.parameters is not None:
            layers = _replace(layers, "params", [_text_layer(store, "params", json.dumps(params))] if params else [])
        if messages is not None:
            layers = _replace(layers, "messages", [_text_layer(store, "messages", json.dumps(messages))])
        for layer in layers:
            is_new = layer.digest not in base_digests
            yield Progress(f"{'creating new' if is_new else 'using existing'} layer {layer.digest}")
        details = read_details(store.blobs.plain_path(_model_layer(layers).digest))
        config = config_blob("gguf", details.family, details.families, details.parameter_size,
                             details.quantization_level, [layer.digest for layer in layers])
        manifest = Manifest(Layer(CONFIG_MEDIA_TYPE, store.blobs.add_bytes(config), len(config)), layers)
        yield Progress("writing manifest")
        store.write_manifest(name, manifest)
    yield Progress("success")


def _base_layers(store: Store, spec: CreateSpec) -> tuple[list[Layer], dict[str, Any]]:
    """The layers the new model starts from, and the base's PARAMETERs (new ones are merged over them)."""
    if spec.files:
        gguf_files = {file: digest for file, digest in spec.files.items() if not file.lower().endswith(".json")}
        if len(gguf_files) != 1:
            raise BadRequest("files must name exactly one GGUF file (safetensors import is not supported)")
        file_name, digest = next(iter(gguf_files.items()))
        try:
            path = store.blobs.path(digest)
        except LokalError:
            raise BadRequest(f"invalid digest {digest!r} for {file_name}") from None
        if not path.is_file():
            raise BadRequest(f"blob {digest} for {file_name} is not on the server; upload it with "
                             f"POST /api/blobs/{digest} first")
        with open(store.blobs.plain_path(digest), "rb") as file:  # decrypted when the store is encrypted
            if file.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                raise BadRequest(f"{file_name} is not a GGUF file")
        return [Layer(LAYER_KINDS["model"], "sha256:" + path.name.removeprefix("sha256-"), store.blobs.size(digest),
                      from_=file_name)], {}
    if not spec.source:
        raise BadRequest("neither 'from' nor 'files' was given: say which model to build on")
    base = store.open(spec.source)  # the weights must be present and whole
    return list(base.entry.manifest.layers), dict(base.params)


def _model_layer(layers: list[Layer]) -> Layer:
    for layer in layers:
        if layer.kind == "model":
            return layer
    raise StoreError("the base model has no weights layer")


def _replace(layers: list[Layer], kind: str, new: list[Layer]) -> list[Layer]:
    """``layers`` with those of ``kind`` replaced by ``new``, where the first of them was (else at the end)."""
    index = next((i for i, layer in enumerate(layers) if layer.kind == kind), len(layers))
    return layers[:index] + new + [layer for layer in layers[index:] if layer.kind != kind]


def _text_layer(store: Store, kind: str, text: str) -> Layer:
    data = text.encode("utf-8")
    return Layer(LAYER_KINDS[kind], store.blobs.add_bytes(data), len(data))


def _check_quantize(quantize: str | None) -> int | None:
    if not quantize:
        return None
    types = quantization_types()
    key = quantize.strip().lower()
    if key not in types:
        raise BadRequest(f"unsupported quantization type {quantize!r}; use one of: {', '.join(sorted(types))}")
    return types[key]


def _check_parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    if not parameters:
        return {}
    normalized = dict(parameters)
    if isinstance(normalized.get("stop"), str):
        normalized["stop"] = [normalized["stop"]]
    split_options(normalized)  # a typo or a wrong type is a 400 now, not a broken model later
    return normalized


def _check_messages(messages: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not messages:
        return None
    checked = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content", "")
        if role not in MESSAGE_ROLES:
            raise BadRequest(f"message {index}: role must be one of {', '.join(MESSAGE_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise BadRequest(f"message {index}: content must be a string")
        checked.append({"role": role, "content": content})
    return checked


def _quantized_layer(store: Store, source: Layer, file_type: int) -> Layer:
    """Quantize the source GGUF with llama.cpp into a temp file, then store it as a blob."""
    import llama_cpp

    source_path = store.blobs.plain_path(source.digest)
    store.blobs.root.mkdir(parents=True, exist_ok=True)
    temp = store.blobs.root / f"tmp-quantize-{secrets.token_hex(8)}-partial"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = physical_cores()
    params.allow_requantize = True
    try:
        status = llama_cpp.llama_model_quantize(str(source_path).encode(), str(temp).encode(), ctypes.byref(params))
        if status != 0 or not temp.is_file():
            raise BadRequest(f"llama.cpp could not quantize this model to the requested type (status {status})")
        digest = store.blobs.add_file(temp)
        return Layer(LAYER_KINDS["model"], digest, store.blobs.size(digest))
    finally:
        _unlink(temp)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
