"""Which engine runs a model, chosen by its format (GGUF: llama.cpp; ONNX: onnxruntime); and the surface
every engine offers.

The runtime only ever holds a ``ModelEngine``: it builds prompts with ``tokenize`` and the special-token
texts, streams generations with ``submit``, embeds with ``embed``, reads ``stats`` and ``close``s it on
unload. ``open_engine`` is the runtime's default way to get one (tests hand the runtime their own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

from lokal.engine.config import EngineConfig
from lokal.engine.engine import Engine, EngineStats
from lokal.engine.stream import Cancellable, Sink
from lokal.errors import ModelLoadError
from lokal.types import SamplingOptions

GGUF_MAGIC = b"GGUF"


class ModelEngine(Protocol):
    config: EngineConfig

    @property
    def bos_text(self) -> str: ...

    @property
    def eos_text(self) -> str: ...

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]: ...

    def submit(self, tokens: Sequence[int], sampling: SamplingOptions, *, grammar: str | None = None,
               sink: Sink) -> Cancellable: ...

    def embed(self, token_lists: Sequence[Sequence[int]], normalize: bool = True) -> list[list[float]]: ...

    def stats(self) -> EngineStats: ...

    def close(self, reason: str = ...) -> None: ...


def model_format(path: Path) -> str:
    """"gguf" for a GGUF file (by its magic bytes, not its name), "onnx" for a folder (an ONNX model's
    layout, see lokal.store.onnx_layout); "" when it is neither."""
    path = Path(path)
    if path.is_dir():
        return "onnx"
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except OSError:
        return ""
    return "gguf" if magic == GGUF_MAGIC else ""


def open_engine(path: Path, config: EngineConfig, fmt: str = "", provider: str | None = None) -> ModelEngine:
    """Load the model at ``path`` into the engine for its format (the store's word for it, else read from the
    file), on ``provider`` where the engine takes one. Blocking: call it off the event loop."""
    fmt = fmt or model_format(Path(path))
    if fmt == "onnx":
        if not (Path(path) / "genai_config.json").is_file() and (Path(path) / "pooling.json").is_file():
            from lokal.engine.onnx_embed import OnnxEmbedder  # a sentence-embedding encoder, not a GenAI model

            return OnnxEmbedder(path, config, provider)
        from lokal.engine.onnx import OnnxEngine  # onnxruntime is an optional extra

        return OnnxEngine(path, config, provider)
    if fmt == "gguf":
        return Engine(str(path), config)
    raise ModelLoadError(f"{path} is not a model format lokal can run (GGUF or an ONNX model folder)")
