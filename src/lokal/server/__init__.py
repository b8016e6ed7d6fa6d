"""lokal's HTTP server: the Ollama API, the OpenAI API and Foundry Local's management endpoints over
one runtime. ``create_app(runtime)`` builds the ASGI app; ``serve(settings)`` runs it with uvicorn."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lokal.server.app import create_app
    from lokal.server.serve import serve

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing lokal.server (the CLI does) does not pull in FastAPI until it serves.
    if name == "create_app":
        from lokal.server.app import create_app

        return create_app
    if name == "serve":
        from lokal.server.serve import serve

        return serve
    raise AttributeError(f"module 'lokal.server' has no attribute {name!r}")
