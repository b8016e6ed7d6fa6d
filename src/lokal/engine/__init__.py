"""The inference engine: one ``Engine`` per loaded model, continuous batching on its own thread.

``Engine.submit`` streams ``Token`` … ``Done`` events into a sink (``AsyncSink`` for asyncio,
``SyncSink`` for threads); ``grammar_for`` turns a request's ``format`` into the grammar it takes.
"""

from __future__ import annotations

from lokal.engine.config import EngineConfig
from lokal.engine.engine import Engine, EngineStats, Handle
from lokal.engine.grammar import grammar_for
from lokal.engine.llamacpp import set_llama_logging
from lokal.engine.stream import AsyncSink, Sink, SyncSink

__all__ = ["Engine", "EngineConfig", "EngineStats", "Handle", "AsyncSink", "SyncSink", "Sink", "grammar_for",
           "set_llama_logging"]
