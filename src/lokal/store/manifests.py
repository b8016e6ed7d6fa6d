"""Manifests: Docker image manifest v2 JSON with Ollama's layer media types.

A manifest names a config blob and the layers of one model (weights, template, system prompt, params, …)
by digest and size. Serialization is stable: one manifest always gives the same bytes, in the key order
Ollama writes, so its digest (the model ID ``ollama list`` shows) is stable too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from lokal.errors import LokalError, StoreError
from lokal.store.blobs import normalize_digest

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"

LAYER_KINDS: dict[str, str] = {
    "model": "application/vnd.ollama.image.model",
    "template": "application/vnd.ollama.image.template",
    "system": "application/vnd.ollama.image.system",
    "params": "application/vnd.ollama.image.params",
    "messages": "application/vnd.ollama.image.messages",
    "license": "application/vnd.ollama.image.license",
    "adapter": "application/vnd.ollama.image.adapter",
    "projector": "application/vnd.ollama.image.projector",
    "knowledge": "application/vnd.lokal.image.knowledge",
    "draft": "application/vnd.lokal.image.draft",  # the GGUF of a DRAFT model; ``from`` is how it was named
    "onnx": "application/vnd.lokal.image.onnx",  # one file of an ONNX model folder; ``from`` is its path
}
KIND_OF_MEDIA_TYPE = {media_type: kind for kind, media_type in LAYER_KINDS.items()}


def media_type_of(kind: str) -> str:
    """``"model"`` → its media type; a full media type is passed through."""
    if kind in LAYER_KINDS:
        return LAYER_KINDS[kind]
    if "/" in kind:
        return kind
    raise StoreError(f"unknown layer kind {kind!r}; known kinds: {', '.join(LAYER_KINDS)}")


@dataclass
class Layer:
    media_type: str
    digest: str
    size: int
    from_: str | None = None  # the file or model this layer came from, as Ollama records it

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.from_:
            data["from"] = self.from_
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Layer:
        if not isinstance(data, dict):
            raise StoreError(f"corrupt manifest: {where} is not an object")
        for key in ("mediaType", "digest", "size"):
            if key not in data:
                raise StoreError(f"corrupt manifest: {where} has no {key!r}")
        media_type, digest, size = data["mediaType"], data["digest"], data["size"]
        if not isinstance(media_type, str) or not media_type:
            raise StoreError(f"corrupt manifest: {where} has an invalid mediaType {media_type!r}")
        try:
            digest = normalize_digest(digest)
        except LokalError:
            raise StoreError(f"corrupt manifest: {where} has an invalid digest {digest!r}") from None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise StoreError(f"corrupt manifest: {where} has an invalid size {size!r}")
        origin = data.get("from")
        return cls(media_type, digest, size, origin if isinstance(origin, str) and origin else None)

    @property
    def kind(self) -> str | None:
        return KIND_OF_MEDIA_TYPE.get(self.media_type)


@dataclass
class Manifest:
    config: Layer
    layers: list[Layer] = field(default_factory=list)
    schema_version: int = 2
    media_type: str = MANIFEST_MEDIA_TYPE

    def to_json(self) -> bytes:
        data = {
            "schemaVersion": self.schema_version,
            "mediaType": self.media_type,
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Manifest:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"corrupt manifest: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise StoreError("corrupt manifest: the top level is not a JSON object")
        schema_version = data.get("schemaVersion", 2)
        if schema_version != 2:
            raise StoreError(f"unsupported manifest schemaVersion {schema_version!r} (expected 2)")
        if "config" not in data:
            raise StoreError("corrupt manifest: no 'config'")
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise StoreError("corrupt manifest: 'layers' is missing or not a list")
        return cls(
            config=Layer.from_dict(data["config"], "config"),
            layers=[Layer.from_dict(layer, f"layer {index}") for index, layer in enumerate(layers)],
            media_type=data.get("mediaType") or MANIFEST_MEDIA_TYPE,
        )

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_json()).hexdigest()

    def layers_of(self, kind: str) -> list[Layer]:
        media_type = media_type_of(kind)
        return [layer for layer in self.layers if layer.media_type == media_type]

    def layer(self, kind: str) -> Layer | None:
        """The last layer of this kind (a later template or system prompt overrides an earlier one)."""
        found = self.layers_of(kind)
        return found[-1] if found else None

    @property
    def total_size(self) -> int:
        """Bytes on disk for this model, config included, as ``ollama list`` counts them."""
        return self.config.size + sum(layer.size for layer in self.layers)

    @property
    def digests(self) -> set[str]:
        return {self.config.digest, *(layer.digest for layer in self.layers)}


def config_blob(model_format: str = "gguf", model_family: str = "", model_families: list[str] | None = None,
                model_type: str = "", file_type: str = "", diff_ids: list[str] | None = None) -> bytes:
    """Ollama's image config JSON (the manifest's config blob); ``diff_ids`` are the layer digests."""
    data = {
        "model_format": model_format,
        "model_family": model_family,
        "model_families": model_families if model_families is not None else
        ([model_family] if model_family else []),
        "model_type": model_type,
        "file_type": file_type,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids or [])},
    }
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
