"""lokal: a private, local runtime for small language models.

The public surface is what ``__all__`` names; everything else is internal.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = _metadata.version("lokal")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from lokal.client import AsyncClient, Client
    from lokal.llm import LLM

__all__ = ["LLM", "Client", "AsyncClient", "__version__"]

_LAZY = {"LLM": "lokal.llm", "Client": "lokal.client", "AsyncClient": "lokal.client"}


def __getattr__(name: str) -> Any:
    # Lazy so that `import lokal` (and the CLI's start-up) does not load llama.cpp or httpx.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lokal' has no attribute {name!r}")
