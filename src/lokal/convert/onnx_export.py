"""`lokal convert MODEL --to onnx`: a stored GGUF model or a safetensors folder → an onnxruntime-genai model.

The path, and why each step is there:

1. GGUF → Hugging Face folder. transformers reads the GGUF (``gguf_file=``) and dequantizes it, but refuses
   ``save_pretrained`` for a model it loaded from GGUF; so the state dict is written with safetensors and the
   config without its gguf ``quantization_config`` (and with ``architectures`` set, which the builder reads).
   A safetensors folder skips this step. (The builder's own GGUF input takes only f16/f32 files.)
2. Folder → ONNX: onnxruntime-genai's model builder (``python -m onnxruntime_genai.models.builder``) writes
   the graph, quantizes it (int4 by default, as Foundry Local ships its CPU models) and the genai_config.json.
3. The folder goes into the store as one manifest (store/onnx_layout.py), named like Foundry's variants:
   ``smollm2:135m-onnx-int4-cpu``.

Needs ``pip install 'lokal[convert]'`` (torch CPU, transformers, accelerate, onnx, onnx_ir, onnxruntime-genai).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lokal.errors import BadRequest, ConfigError, LokalError
from lokal.store.names import ModelName
from lokal.store.onnx_layout import OnnxInfo, is_onnx, store_folder
from lokal.store.store import Store

log = logging.getLogger("lokal.convert")

PRECISIONS = ("int4", "int8", "fp16", "fp32")
PROVIDERS = ("cpu", "cuda", "dml", "webgpu")


@dataclass
class ConvertProgress:
    status: str  # one line for the progress display
    step: int = 0  # 1: read the source, 2: build ONNX, 3: store
    total_steps: int = 3


def onnx_tag(name: ModelName, precision: str, provider: str) -> ModelName:
    """``smollm2`` / ``smollm2:135m`` → ``smollm2:135m-onnx-int4-cpu`` (the catalog's size, as Foundry names
    variants by device); a name outside the catalog keeps its tag: ``x:latest`` → ``x:onnx-int4-cpu``."""
    from lokal.store.catalog import Catalog

    suffix = f"onnx-{precision}-{provider}"
    variant = Catalog.packaged().resolve(name.display)
    base = variant.size if variant is not None else ("" if name.tag.lower() == "latest" else name.tag)
    tag = f"{base}-{suffix}" if base else suffix
    return ModelName(name.host, name.namespace, name.model, tag)


def check_installed() -> None:
    missing = []
    for module in ("torch", "transformers", "accelerate", "onnx", "onnx_ir", "onnxruntime_genai", "safetensors"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(f"converting to ONNX needs {', '.join(missing)}: pip install 'lokal[convert]'")


def convert_to_onnx(store: Store, source: str, *, precision: str | None = None, provider: str = "cpu",
                    target: str | None = None, work_dir: Path | None = None) -> Iterator[ConvertProgress]:
    """Convert ``source`` (a stored GGUF model name, or a folder with config.json + safetensors) and store the
    result as ``target`` (default: the source's tag + ``-onnx-<precision>-<provider>``). Yields progress;
    the last event's status names the new model. Precision defaults to int4; sentence-embedding encoders
    (convert/onnx_embedding.py) export at fp32 only."""
    embedding_folder = _embedding_source(store, source)
    if embedding_folder is not None:
        yield from _convert_embedding(store, source, embedding_folder, precision or "fp32", provider, target,
                                      work_dir)
        return
    precision = precision or "int4"
    if precision not in PRECISIONS:
        raise BadRequest(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if provider not in PROVIDERS:
        raise BadRequest(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    check_installed()
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise BadRequest(f"{source} has no config.json: expected a Hugging Face model folder")
        name = ModelName.parse(target or folder.name.lower())
        family, parameter_size, template = _folder_facts(folder), "", None
        gguf = None
    else:
        entry = store.get(source)
        if is_onnx(entry):
            raise BadRequest(f"{entry.name.display} is already an ONNX model")
        gguf = store.model_path(entry)
        from lokal.store.gguf_info import read_details

        details = read_details(gguf)
        name = ModelName.parse(target) if target else onnx_tag(entry.name, precision, provider)
        family, parameter_size, template = details.architecture, details.parameter_size, details.chat_template
    with tempfile.TemporaryDirectory(prefix="lokal-convert-", dir=work_dir) as temp:
        temp_dir = Path(temp)
        if gguf is not None:
            yield ConvertProgress("dequantizing the GGUF weights with transformers", 1)
            folder = temp_dir / "hf"
            gguf_to_hf_folder(gguf, folder, chat_template=template)
        out = temp_dir / "onnx"
        yield ConvertProgress(f"building the ONNX model ({precision}, {provider}) with onnxruntime-genai", 2)
        for line in run_builder(folder, out, temp_dir / "cache", precision, provider):
            yield ConvertProgress(line, 2)
        yield ConvertProgress(f"storing {name.display}", 3)
        store_folder(store, name, out, OnnxInfo(family=family, parameter_size=parameter_size, precision=precision,
                                                provider=provider, source=source))
    yield ConvertProgress(f"created {name.display}", 3)


def _embedding_source(store: Store, source: str) -> Path | None:
    """The sentence-transformers folder to export when ``source`` is an embedding encoder: the folder itself,
    or for a stored model, the safetensors the catalog's bundled package ships (all-minilm). None otherwise."""
    from lokal.convert.onnx_embedding import is_embedding_folder

    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder if is_embedding_folder(folder) else None
    if not store.exists(source) or is_onnx(store.get(source)):
        return None
    from lokal.store.gguf_info import EMBEDDING_ARCHITECTURES, read_details

    if read_details(store.model_path(store.get(source))).architecture not in EMBEDDING_ARCHITECTURES:
        return None
    from lokal.store.catalog import Catalog
    from lokal.store.sources.bundled import PACKAGES, is_installed, package_archive

    variant = Catalog.packaged().resolve(source)
    for spec in variant.sources if variant is not None else ():
        package = PACKAGES.get(getattr(spec, "package", "") or "")
        if spec.kind == "bundled" and package and package.layout == "safetensors-zip" and \
                is_installed(package.pip_name):
            return package_archive(package)
    raise BadRequest(f"{source} is a GGUF embedding model; exporting it to ONNX needs its safetensors: "
                     f"`lokal convert /path/to/sentence-transformers-folder --to onnx`")


def _convert_embedding(store: Store, source: str, folder_or_zip: Path, precision: str, provider: str,
                       target: str | None, work_dir: Path | None) -> Iterator[ConvertProgress]:
    import zipfile

    from lokal.convert.onnx_embedding import export_embedding, is_embedding_folder

    if precision != "fp32" or provider != "cpu":
        raise BadRequest("embedding models export to ONNX at fp32 for the CPU only (--precision fp32 "
                         "--provider cpu)")
    check_installed()
    if folder_or_zip.is_dir():
        name = ModelName.parse(target or f"{folder_or_zip.name.lower()}:onnx-fp32-cpu")
    else:
        name = ModelName.parse(target) if target else onnx_tag(store.get(source).name, precision, provider)
    with tempfile.TemporaryDirectory(prefix="lokal-convert-", dir=work_dir) as temp:
        folder = folder_or_zip
        if not folder.is_dir():
            yield ConvertProgress(f"unpacking {folder_or_zip.name}", 1)
            with zipfile.ZipFile(folder_or_zip) as archive:
                archive.extractall(Path(temp) / "model")
            folder = next((p.parent for p in sorted((Path(temp) / "model").rglob("config.json"))
                           if is_embedding_folder(p.parent)), Path(temp) / "model")
        yield ConvertProgress("exporting the encoder with torch.onnx (fp32)", 2)
        out = Path(temp) / "onnx"
        export_embedding(folder, out)
        yield ConvertProgress(f"storing {name.display}", 3)
        store_folder(store, name, out, OnnxInfo(family="bert", parameter_size="", precision=precision,
                                                provider=provider, source=source))
    yield ConvertProgress(f"created {name.display}", 3)


def gguf_to_hf_folder(gguf: Path, folder: Path, chat_template: str | None = None) -> None:
    """Dequantize a GGUF into a Hugging Face folder (config.json, model.safetensors, tokenizer files)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    # transformers wants a file name ending in .gguf inside a directory; blobs are named by digest.
    link_dir = folder.parent / "gguf"
    link_dir.mkdir(exist_ok=True)
    link = link_dir / "model.gguf"
    if not link.exists():
        os.symlink(gguf.resolve(), link)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(link_dir), gguf_file=link.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(link_dir), gguf_file=link.name)
    except Exception as exc:  # transformers raises ValueError/KeyError/… for architectures it cannot read
        raise BadRequest(f"transformers cannot read this GGUF for conversion: {exc}") from None
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # shared with the embeddings; safetensors refuses aliased tensors
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(folder))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(folder))


def run_builder(folder: Path, out: Path, cache: Path, precision: str, provider: str) -> Iterator[str]:
    """Run onnxruntime-genai's model builder in a child process, yielding its output lines."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(out),
               "-p", precision, "-e", provider, "-c", str(cache)]
    log.info("running %s", " ".join(command))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace")
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        if line and "it/s]" not in line and "s/it]" not in line:  # tqdm bars: one line per tensor
            tail = (tail + [line])[-20:]
            yield line
    if process.wait() != 0 or not (out / "genai_config.json").is_file():
        raise LokalError("onnxruntime-genai's model builder failed:\n" + "\n".join(tail))


def _folder_facts(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(config.get("model_type", ""))
