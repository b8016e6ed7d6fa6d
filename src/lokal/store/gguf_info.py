"""What a GGUF file is, read from its header without touching tensor data.

``gguf.GGUFReader`` builds a numpy view of every vocabulary string, which takes seconds for a 256k
vocabulary; ``show``/``list`` need a handful of keys. So this module walks the header itself over a
memory map, using the ``gguf`` package's constants for the format (value types, file types), skipping
large arrays by length and reading only the two vocabulary strings it needs (BOS and EOS).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from gguf.constants import GGUF_MAGIC, GGUFValueType, LlamaFileType, PoolingType

from lokal.errors import StoreError

# Arrays longer than this (vocabularies, merges, scores) are not kept in ``metadata``.
MAX_METADATA_ARRAY = 128
# Architectures that encode text into one vector rather than continue it.
EMBEDDING_ARCHITECTURES = {"bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2",
                           "jina-bert-v3", "eurobert", "t5encoder"}

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}


@dataclass
class ModelDetails:
    architecture: str
    name: str | None
    family: str  # Ollama reports the architecture as the family
    parameter_count: int
    parameter_size: str  # "134.52M", "1.5B", as Ollama prints it
    file_type: int | None
    quantization_level: str  # "Q4_1", "Q4_K_M", "F16", … or "unknown"
    context_length: int | None
    embedding_length: int | None
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    license: str | None
    pooling_type: str | None  # "mean", "cls", … for embedding models
    metadata: dict[str, Any] = field(default_factory=dict)  # every key; long arrays as None, like `ollama show`

    @property
    def families(self) -> list[str]:
        return [self.family] if self.family else []


class _Header:
    """A cursor over the GGUF header in a memory map."""

    def __init__(self, data: mmap.mmap, path: Path):
        self.data = data
        self.path = path
        self.offset = 0
        self.endian = "<"

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(self.endian + fmt, self.data, self.offset)[0]
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("Q")
        raw = self.data[self.offset:self.offset + length]
        if len(raw) != length:
            raise struct.error("string runs past the end of the file")
        self.offset += length
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        unpack, data, fmt = struct.unpack_from, self.data, self.endian + "Q"
        offset = self.offset
        for _ in range(count):
            offset += 8 + unpack(fmt, data, offset)[0]
        if offset > len(data):
            raise struct.error("array runs past the end of the file")
        self.offset = offset

    def value(self, value_type: int) -> Any:
        """One value; an array longer than MAX_METADATA_ARRAY is skipped and returned as its
        (item type, length, start offset) so a caller can still index into it."""
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type == GGUFValueType.ARRAY:
            item_type, length = self.unpack("I"), self.unpack("Q")
            if length > MAX_METADATA_ARRAY:
                start = self.offset
                if item_type == GGUFValueType.STRING:
                    self.skip_strings(length)
                elif item_type in _SCALAR_FORMATS:
                    self.offset += length * struct.calcsize(_SCALAR_FORMATS[GGUFValueType(item_type)])
                else:
                    raise StoreError(f"{self.path}: unsupported GGUF array of type {item_type}")
                return _SkippedArray(item_type, length, start)
            return [self.value(item_type) for _ in range(length)]
        try:
            return self.unpack(_SCALAR_FORMATS[GGUFValueType(value_type)])
        except (ValueError, KeyError):
            raise StoreError(f"{self.path}: unknown GGUF value type {value_type}") from None


@dataclass(frozen=True)
class _SkippedArray:
    item_type: int
    length: int
    start: int


def _nth_string(header: _Header, array: _SkippedArray, index: int) -> str | None:
    if array.item_type != GGUFValueType.STRING or not 0 <= index < array.length:
        return None
    header.offset = array.start
    header.skip_strings(index)
    return header.string()


def _read_header(path: Path) -> tuple[dict[str, Any], int, _Header, mmap.mmap]:
    """(metadata, parameter count from tensor shapes, cursor, map); the caller closes the map."""
    with open(path, "rb") as file:
        try:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise StoreError(f"{path} is not a GGUF file (it is empty)") from None
    header = _Header(data, path)
    try:
        if len(data) < 24 or struct.unpack_from("<I", data, 0)[0] != GGUF_MAGIC:
            raise StoreError(f"{path} is not a GGUF file (bad magic)")
        header.offset = 4
        version = header.unpack("I")
        if version & 0xFFFF == 0:  # written on a machine of the other byte order
            header.endian = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in (2, 3):
            raise StoreError(f"{path}: unsupported GGUF version {version}")
        num_tensors, num_keys = header.unpack("Q"), header.unpack("Q")
        metadata: dict[str, Any] = {}
        for _ in range(num_keys):
            key = header.string()
            metadata[key] = header.value(header.unpack("I"))
        parameter_count = 0
        for _ in range(num_tensors):
            header.string()  # tensor name
            num_dims = header.unpack("I")
            num_elements = 1
            for _ in range(num_dims):
                num_elements *= header.unpack("Q")
            header.offset += 4 + 8  # tensor type, data offset
            parameter_count += num_elements
        return metadata, parameter_count, header, data
    except struct.error as exc:
        data.close()
        raise StoreError(f"{path} is not a valid GGUF file (truncated or corrupt header: {exc})") from None
    except BaseException:
        data.close()
        raise


def format_parameter_count(count: int) -> str:
    """Ollama's parameter size: whole numbers bare, else 2 decimals for millions, 1 for billions."""
    for scale, suffix, decimals in ((1_000_000_000, "B", 1), (1_000_000, "M", 2)):
        if count >= scale:
            number = count / scale
            return f"{number:.0f}{suffix}" if number == int(number) else f"{number:.{decimals}f}{suffix}"
    if count >= 1000:
        return f"{count / 1000:.0f}K"
    return str(count)


def quantization_name(file_type: int | None) -> str:
    """``general.file_type`` → the name Ollama shows (``Q4_K_M``, ``F16``, …)."""
    if file_type is None:
        return "unknown"
    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        return "unknown"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def read_details(path: Path | str) -> ModelDetails:
    """Details of a GGUF file; cached per (path, size, mtime)."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist") from None
    cached = _read_details_cached(resolved, stat.st_size, stat.st_mtime_ns)
    return replace(cached, metadata=dict(cached.metadata))  # callers may edit their copy


@lru_cache(maxsize=64)
def _read_details_cached(path: Path, size: int, mtime_ns: int) -> ModelDetails:
    metadata, tensor_parameters, header, data = _read_header(path)
    try:
        def clean(value: Any) -> Any:
            return None if isinstance(value, _SkippedArray) else value

        def text(key: str) -> str | None:
            value = metadata.get(key)
            return value if isinstance(value, str) else None

        def integer(key: str) -> int | None:
            value = metadata.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        architecture = text("general.architecture") or "unknown"
        tokens = metadata.get("tokenizer.ggml.tokens")

        def token(key: str) -> str | None:
            token_id = integer(key)
            if token_id is None:
                return None
            if isinstance(tokens, _SkippedArray):
                return _nth_string(header, tokens, token_id)
            if isinstance(tokens, list) and 0 <= token_id < len(tokens):
                return tokens[token_id]
            return None

        parameter_count = integer("general.parameter_count") or tensor_parameters
        pooling = integer(f"{architecture}.pooling_type")
        try:
            pooling_name = PoolingType(pooling).name.lower() if pooling is not None else None
        except ValueError:
            pooling_name = str(pooling)
        license_value = metadata.get("general.license")
        file_type = integer("general.file_type")
        return ModelDetails(
            architecture=architecture,
            name=text("general.name"),
            family=architecture,
            parameter_count=parameter_count,
            parameter_size=format_parameter_count(parameter_count),
            file_type=file_type,
            quantization_level=quantization_name(file_type),
            context_length=integer(f"{architecture}.context_length"),
            embedding_length=integer(f"{architecture}.embedding_length"),
            chat_template=text("tokenizer.chat_template"),
            bos_token=token("tokenizer.ggml.bos_token_id"),
            eos_token=token("tokenizer.ggml.eos_token_id"),
            license=", ".join(license_value) if isinstance(license_value, list) else text("general.license"),
            pooling_type=pooling_name,
            metadata={key: clean(value) for key, value in metadata.items()},
        )
    except struct.error as exc:
        raise StoreError(f"{path} is not a valid GGUF file (corrupt vocabulary: {exc})") from None
    finally:
        data.close()


def is_embedding_model(details: ModelDetails) -> bool:
    """Encoder architectures, or pooled output without a chat template: vectors, not text."""
    if details.architecture in EMBEDDING_ARCHITECTURES:
        return True
    has_pooling = details.pooling_type not in (None, "none")
    return has_pooling and not details.chat_template
