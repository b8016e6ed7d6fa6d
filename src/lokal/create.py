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
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from lokal.config import physical_cores
from lokal.errors import BadRequest, LokalError, ModelLoadError, ModelNotFound, StoreError
from lokal.modelfile import MAX_MODELFILE_BYTES, Modelfile, ModelfileError, parse
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
    knowledge: dict[str, str] | None = None  # (lokal) document name → digest of an uploaded FILE document
    draft: str | None = None  # (lokal) DRAFT: a model in the store, or the digest of an uploaded GGUF


def read_modelfile(path: Path) -> Modelfile:
    """Parse the Modelfile at ``path``; missing, too large or invalid → an error naming it."""
    try:
        size = path.stat().st_size
        if size > MAX_MODELFILE_BYTES:
            raise ModelfileError(f"{path}: the Modelfile is {size} bytes; the limit is {MAX_MODELFILE_BYTES} (1 MiB)")
        data = path.read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read the Modelfile {path}: {exc.strerror or exc}") from None
    try:
        return parse(data)
    except ModelfileError as exc:
        raise ModelfileError(f"{path}: {exc.message}") from None


def _is_path(value: str, folder: Path) -> bool:
    """FROM/ADAPTER values that name files: written as paths, or a file or folder beside the Modelfile."""
    return value.startswith((".", "/", "~")) or value.lower().endswith(".gguf") or (folder / value).exists()


def _local_file(value: str, folder: Path, what: str) -> Path:
    path = (folder / Path(value).expanduser()).resolve()
    if not path.exists():
        raise BadRequest(f"{what} {value}: no such file (looked at {path})")
    return path


def spec_from_modelfile(name: str, modelfile: Modelfile, folder: Path, add_blob: Callable[[Path], str],
                        quantize: str | None = None) -> CreateSpec:
    """The /api/create request a Modelfile stands for, as Ollama's client builds it: local files (a GGUF in
    FROM, ADAPTERs) go up as blobs through ``add_blob`` (path → digest) and are named by digest."""
    spec = CreateSpec(name=name, template=modelfile.template, system=modelfile.system,
                      license=list(modelfile.licenses) or None,
                      parameters=modelfile.parameter_dict() or None,
                      messages=[{"role": role, "content": content} for role, content in modelfile.messages],
                      quantize=quantize)
    if _is_path(modelfile.from_, folder):
        path = _local_file(modelfile.from_, folder, "FROM")
        spec.files = _folder_files(path, modelfile.from_, add_blob) if path.is_dir() else {path.name: add_blob(path)}
    else:
        spec.source = modelfile.from_
    if modelfile.files:
        spec.knowledge = {}
        for value in modelfile.files:
            path = (folder / Path(value).expanduser()).resolve()
            if not path.is_file():
                raise BadRequest(f"FILE {value}: no such file (looked at {path})")
            spec.knowledge[value] = add_blob(path)
    if modelfile.draft:
        if _is_path(modelfile.draft, folder):
            path = _local_file(modelfile.draft, folder, "DRAFT")
            if path.is_dir():
                raise BadRequest(f"DRAFT {modelfile.draft}: a folder; use a GGUF file or a model name")
            spec.draft = add_blob(path)
        else:
            spec.draft = modelfile.draft
    if modelfile.adapters:
        spec.adapters = {}
        for value in modelfile.adapters:
            path = _local_file(value, folder, "ADAPTER")
            if path.is_dir():
                raise BadRequest(f"ADAPTER {value}: a safetensors adapter folder is not supported; use a GGUF")
            spec.adapters[path.name] = add_blob(path)
    return spec


# The files of a Hugging Face model folder that a conversion reads.
_FOLDER_FILES = ("*.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json", "1_Pooling/config.json")


def _folder_files(path: Path, written: str, add_blob: Callable[[Path], str]) -> dict[str, str]:
    from lokal.convert.safetensors_gguf import is_safetensors_folder

    if not is_safetensors_folder(path):
        raise BadRequest(f"FROM {written}: the folder holds no config.json and *.safetensors to import")
    files = sorted({file for pattern in _FOLDER_FILES for file in path.glob(pattern) if file.is_file()})
    return {file.relative_to(path).as_posix(): add_blob(file) for file in files}


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
    quantize_type = _check_quantize(spec.quantize)
    parameters = _check_parameters(spec.parameters)
    messages = _check_messages(spec.messages)
    chunks = _knowledge_chunks(store, spec.knowledge)  # every document must read before anything is stored
    if chunks is not None:
        _check_embed_model(store, parameters.get("embed_model"))
    safetensors = _safetensors_files(store, spec.files)
    if safetensors:  # converted inside the create, under its progress; adapters are checked against the result
        return _create(store, name, spec, [], parameters, messages, quantize_type, None, safetensors, chunks)
    base_layers, base_params = _base_layers(store, spec)
    adapter_layers = _adapter_layers(store, spec.adapters, _model_layer(base_layers))
    draft_layer = _draft_layer(store, spec.draft, _model_layer(base_layers))
    return _create(store, name, spec, base_layers, {**base_params, **parameters}, messages, quantize_type,
                   adapter_layers, None, chunks, draft_layer)


def _create(store: Store, name: ModelName, spec: CreateSpec, layers: list[Layer], params: dict[str, Any],
            messages: list[dict[str, Any]] | None, quantize_type: int | None,
            adapter_layers: list[Layer] | None, safetensors: dict[str, Path] | None,
            chunks: list[Any] | None, draft_layer: Layer | None = None) -> Iterator[Progress]:
    from lokal.store.gguf_info import read_details

    with store.writing():  # no garbage collection may take the new blobs before the manifest names them
        yield Progress("gathering model components")
        base_digests = {layer.digest for layer in layers}
        if safetensors:
            yield Progress("converting model")
            layers = [_converted_layer(store, safetensors)]
            adapter_layers = _adapter_layers(store, spec.adapters, layers[0])
            draft_layer = _draft_layer(store, spec.draft, layers[0])
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
        if adapter_layers is not None:
            layers = _replace(layers, "adapter", adapter_layers)
        if draft_layer is not None:
            layers = _replace(layers, "draft", [draft_layer])
        if chunks is not None:
            from lokal.knowledge.build import embed_chunks
            from lokal.knowledge.index import DEFAULT_EMBED_MODEL

            embed_model = params.get("embed_model") or DEFAULT_EMBED_MODEL
            yield Progress(f"embedding {len(chunks)} chunks of {len(spec.knowledge or {})} files with {embed_model}")
            index = embed_chunks(store, embed_model, chunks)
            data = index.to_json()
            layers = _replace(layers, "knowledge", [Layer(LAYER_KINDS["knowledge"], store.blobs.add_bytes(data),
                                                          len(data))])
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
            raise BadRequest("files must name exactly one GGUF file, or a safetensors model folder's files")
        file_name, digest = next(iter(gguf_files.items()))
        path = _uploaded_blob(store, file_name, digest)
        with open(store.blobs.plain_path(digest), "rb") as file:  # decrypted when the store is encrypted
            if file.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                raise BadRequest(f"{file_name} is not a GGUF file")
        return [Layer(LAYER_KINDS["model"], "sha256:" + path.name.removeprefix("sha256-"), store.blobs.size(digest),
                      from_=file_name)], {}
    if not spec.source:
        raise BadRequest("neither 'from' nor 'files' was given: say which model to build on")
    base = store.open(spec.source)  # the weights must be present and whole
    return list(base.entry.manifest.layers), dict(base.params)


def _safetensors_files(store: Store, files: dict[str, str] | None) -> dict[str, Path] | None:
    """An uploaded Hugging Face folder (``*.safetensors`` plus its JSON files): relative name → blob path."""
    if not files or not any(name.lower().endswith(".safetensors") for name in files):
        return None
    paths = {}
    for name, digest in files.items():
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise BadRequest(f"invalid file name {name!r}: a path inside the model folder")
        paths[name] = _uploaded_blob(store, name, digest)
    if "config.json" not in paths:
        raise BadRequest("a safetensors model needs its config.json among the files")
    return paths


def _converted_layer(store: Store, files: dict[str, Path]) -> Layer:
    """Lay the uploaded files out as a folder (links to the blobs), convert it to GGUF, store that."""
    import shutil
    import tempfile

    from lokal.convert.safetensors_gguf import convert

    store.blobs.root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tmp-convert-", dir=store.blobs.root))
    try:
        folder = work / "model"
        for name, blob in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(blob, folder / name)
        convert(folder, work / "model.gguf")
        digest = store.blobs.add_file(work / "model.gguf")
        return Layer(LAYER_KINDS["model"], digest, store.blobs.size(digest))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _uploaded_blob(store: Store, file_name: str, digest: str) -> Path:
    try:
        path = store.blobs.path(digest)
    except LokalError:
        raise BadRequest(f"invalid digest {digest!r} for {file_name}") from None
    if not path.is_file():
        raise BadRequest(f"blob {digest} for {file_name} is not on the server; upload it with "
                         f"POST /api/blobs/{digest} first")
    return path


def _adapter_layers(store: Store, adapters: dict[str, str] | None, model: Layer) -> list[Layer] | None:
    """Check LoRA adapters: each must be a GGUF LoRA adapter made for the base model's architecture."""
    from lokal.store.gguf_info import read_details

    if not adapters:
        return None
    base = read_details(store.blobs.path(model.digest))
    for file_name, digest in adapters.items():
        path = _uploaded_blob(store, file_name, digest)
        with open(path, "rb") as file:
            if file.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                raise BadRequest(f"adapter {file_name} is not a GGUF file (convert a LoRA to GGUF first)")
        adapter = read_details(path)
        if adapter.metadata.get("general.type") != "adapter" or adapter.metadata.get("adapter.type") != "lora":
            raise BadRequest(f"adapter {file_name} is not a LoRA adapter GGUF (general.type="
                             f"{adapter.metadata.get('general.type')!r}, adapter.type="
                             f"{adapter.metadata.get('adapter.type')!r})")
        if adapter.architecture != base.architecture:
            raise BadRequest(f"adapter {file_name} was made for a {adapter.architecture!r} model; the base model "
                             f"is {base.architecture!r}")
    _check_adapter_shapes(store.blobs.path(model.digest), {name: _uploaded_blob(store, name, digest)
                                                           for name, digest in adapters.items()})
    return [Layer(LAYER_KINDS["adapter"], digest, store.blobs.size(digest)) for digest in adapters.values()]


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _draft_layer(store: Store, draft: str | None, model: Layer) -> Layer | None:
    """DRAFT: the GGUF of a stored model (shared, not copied) or an uploaded one, checked to share the
    model's vocabulary, since its guesses are token ids the model must read as its own."""
    if not draft:
        return None
    if _DIGEST.fullmatch(draft):
        _uploaded_blob(store, "DRAFT", draft)  # present on the server, or a clear 400
        digest, from_ = draft, None
        with open(store.blobs.plain_path(digest), "rb") as file:
            if file.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                raise BadRequest("DRAFT: the uploaded file is not a GGUF model")
    else:
        try:
            stored = store.open(draft)
        except ModelNotFound:
            raise BadRequest(f'DRAFT {draft}: model "{draft}" not found; pull or create it first') from None
        if stored.format != "gguf":
            raise BadRequest(f"DRAFT {draft}: a draft model must be a GGUF model, not {stored.format}")
        digest, from_ = _model_layer(stored.entry.manifest.layers).digest, stored.display
    _check_draft_vocabulary(store.blobs.plain_path(model.digest), store.blobs.plain_path(digest), draft)
    return Layer(LAYER_KINDS["draft"], digest, store.blobs.size(digest), from_=from_)


def _check_draft_vocabulary(model_path: Path, draft_path: Path, draft: str) -> None:
    from lokal.engine.config import EngineConfig
    from lokal.engine.draft import check_same_vocabulary
    from lokal.engine.llamacpp import Runner

    vocabularies: list[Runner] = []
    try:
        for path in (model_path, draft_path):
            vocabularies.append(Runner(str(path), EngineConfig(), vocab_only=True))
        check_same_vocabulary(vocabularies[1], vocabularies[0])
    except ModelLoadError as exc:
        raise BadRequest(f"DRAFT {draft}: {exc.message}") from None
    finally:
        for vocabulary in vocabularies:
            vocabulary.close()


# What llama.cpp's convert_lora_to_gguf writes. ggml's CPU matrix multiply has no kernel for other types
# (an F64 factor jumps to a null pointer on the first decode: measured, a segfault in ggml_compute_forward_mul_mat).
ADAPTER_TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0")


def _check_adapter_shapes(model_path: Path, adapters: dict[str, Path]) -> None:
    """Each LoRA pair must fit the weight it adapts (A: [n_in, r], B: [r, n_out] in ggml order) in a type
    llama.cpp multiplies, so a model never stores an adapter that would fail or crash at load."""
    from gguf import GGUFReader

    weights = {t.name: tuple(int(n) for n in t.shape) for t in GGUFReader(str(model_path)).tensors}
    for file_name, path in adapters.items():
        tensors = GGUFReader(str(path)).tensors
        for tensor in tensors:
            if tensor.tensor_type.name not in ADAPTER_TENSOR_TYPES:
                raise BadRequest(f"adapter {file_name}: {tensor.name} is {tensor.tensor_type.name}; LoRA factors "
                                 f"must be one of {', '.join(ADAPTER_TENSOR_TYPES)}")
        factors = {t.name: tuple(int(n) for n in t.shape) for t in tensors}
        for name, a_shape in factors.items():
            if not name.endswith(".lora_a"):
                continue
            weight = name.removesuffix(".lora_a")
            b_shape = factors.get(weight + ".lora_b")
            if weight not in weights:
                raise BadRequest(f"adapter {file_name} adapts {weight}, which the base model does not have")
            if b_shape is None or len(a_shape) != 2 or len(b_shape) != 2 or a_shape[1] != b_shape[0] \
                    or a_shape[0] != weights[weight][0] or b_shape[1] != weights[weight][1]:
                raise BadRequest(f"adapter {file_name}: {weight} is {list(weights[weight][:2])} in the base model, "
                                 f"but its LoRA factors are {list(a_shape)} and {list(b_shape or [])}")


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
    from lokal.knowledge.index import KNOWLEDGE_PARAMETERS

    if not parameters:
        return {}
    normalized = dict(parameters)
    if isinstance(normalized.get("stop"), str):
        normalized["stop"] = [normalized["stop"]]
    for name, kind in KNOWLEDGE_PARAMETERS.items():
        if name in normalized and not isinstance(normalized[name], (int, float) if kind is float else kind):
            raise BadRequest(f"parameter {name} must be a {kind.__name__}")
    # a typo or a wrong type is a 400 now, not a broken model later
    split_options({k: v for k, v in normalized.items() if k not in KNOWLEDGE_PARAMETERS})
    return normalized


def _check_embed_model(store: Store, embed_model: str | None) -> None:
    from lokal.knowledge.index import DEFAULT_EMBED_MODEL

    name = embed_model or DEFAULT_EMBED_MODEL
    if not store.exists(name):
        raise BadRequest(f'the knowledge files are embedded with "{name}", which is not in the store: '
                         f"lokal pull {name} (or set PARAMETER embed_model)")


def _knowledge_chunks(store: Store, documents: dict[str, str] | None) -> list[Any] | None:
    from lokal.knowledge.documents import chunk_text, read_document

    if not documents:
        return None
    chunks = []
    for name, digest in documents.items():
        chunks += chunk_text(name, read_document(_uploaded_blob(store, name, digest), name))
    return chunks


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
