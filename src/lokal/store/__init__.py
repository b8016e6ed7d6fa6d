"""The model store: names, content-addressed blobs, manifests, and what a GGUF file contains.

``Store`` is the facade the rest of lokal uses; ``gguf_info`` is imported lazily because it pulls in numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lokal.store.blobs import BlobStore, BlobWriter
from lokal.store.manifests import LAYER_KINDS, Layer, Manifest, config_blob
from lokal.store.names import ModelName
from lokal.store.store import ListResult, ModelEntry, Store

if TYPE_CHECKING:
    from lokal.store.gguf_info import ModelDetails, read_details

__all__ = ["BlobStore", "BlobWriter", "LAYER_KINDS", "Layer", "ListResult", "Manifest", "ModelDetails",
           "ModelEntry", "ModelName", "Store", "config_blob", "read_details"]

_LAZY = {"ModelDetails", "read_details"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from lokal.store import gguf_info

        return getattr(gguf_info, name)
    raise AttributeError(f"module 'lokal.store' has no attribute {name!r}")
